"""Plain step-by-step references written from the spec, used only by tests."""

import torch
import torch.nn.functional as F


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba-ssm's selective_scan_ref in float64: one Python step per time step."""
    u, delta, A = u.double(), delta.double(), A.double()
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape

    def per_channel(M):  # -> (B, D, N, L) or (D, N)
        M = M.double()
        if M.dim() == 2:
            return M
        if M.dim() == 3:
            M = M.unsqueeze(1)
        return M.repeat_interleave(dim // M.shape[1], dim=1)

    B, C = per_channel(B), per_channel(C)
    state = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        Bt = B if B.dim() == 2 else B[..., t]
        Ct = C if C.dim() == 2 else C[..., t]
        state = torch.exp(delta[:, :, t, None] * A) * state + delta[:, :, t, None] * Bt * u[:, :, t, None]
        ys.append((state * Ct).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return y, state


def stacked_scan_reference(u, delta, A, B, C, D, z, delta_bias, reverse, delta_softplus=True):
    """The stacked-sets layout of scan.selective_scan ((S, B, L, E) etc.; z shared; a reversed set
    runs from the last step to the first), one set at a time through selective_scan_reference."""
    ys = []
    for s, backwards in enumerate(reverse):

        def order(x, backwards=backwards):  # (B, L, X) -> (B, X, L) in scan order
            return None if x is None else (x.transpose(1, 2).flip(-1) if backwards else x.transpose(1, 2))

        y, _ = selective_scan_reference(
            order(u[s]),
            order(delta[s]),
            A[s],
            order(B[s]),
            order(C[s]),
            None if D is None else D[s],
            order(z),
            None if delta_bias is None else delta_bias[s],
            delta_softplus,
        )
        ys.append((y.flip(-1) if backwards else y).transpose(1, 2))
    return torch.stack(ys)


def bimamba_reference(mixer, hidden):
    """The bimamba-v2 forward of a mixer module, from its parameters (see mixer_reference)."""
    p = mixer.state_dict()
    return mixer_reference(p, mixer.d_inner, mixer.dt_rank, mixer.d_state, mixer.divide_out, hidden)


def mixer_reference(p, E, R, N, divide_out, hidden):
    """The bimamba-v2 forward written from docs/official.md §2, in float64, with the step-by-step
    scan: p maps the official parameter names (in_proj.weight, conv1d_b.bias, A_b_log, ...) to tensors."""
    p = {k: v.double() for k, v in p.items()}
    xz = (hidden.double() @ p["in_proj.weight"].T).transpose(1, 2)  # (B, 2E, L)
    x, z = xz[:, :E], xz[:, E:]

    def branch(x, z, sfx):
        length = x.shape[-1]
        k = p[f"conv1d{sfx}.weight"].shape[-1]
        xc = F.conv1d(F.pad(x, (k - 1, 0)), p[f"conv1d{sfx}.weight"], p[f"conv1d{sfx}.bias"], groups=E)[..., :length]
        xc = F.silu(xc)
        dbc = xc.transpose(1, 2) @ p[f"x_proj{sfx}.weight"].T  # (B, L, R + 2N)
        dt, Bm, Cm = dbc[..., :R], dbc[..., R : R + N], dbc[..., R + N :]
        delta = (dt @ p[f"dt_proj{sfx}.weight"].T).transpose(1, 2)
        A = -torch.exp(p["A_log" if not sfx else "A_b_log"])
        Dp = p["D" if not sfx else "D_b"]
        y, _ = selective_scan_reference(
            xc, delta, A, Bm.transpose(1, 2), Cm.transpose(1, 2), Dp, z, p[f"dt_proj{sfx}.bias"], True
        )
        return y

    out = branch(x, z, "") + branch(x.flip(-1), z.flip(-1), "_b").flip(-1)
    if divide_out:
        out = out / 2
    return out.transpose(1, 2) @ p["out_proj.weight"].T


def official_ssamba_reference(state, fbank_btf, fstride, tstride):
    """AMBAModel.forward(x, task="ft_avgtok") written from docs/official.md §2 and §8, from
    an official state dict ("module.v.*", "module.mlp_head.*"), float64. x: (B, T frames, 128 mel)."""
    sd = {k.removeprefix("module."): v.double() for k, v in state.items()}
    v = {k[2:]: t for k, t in sd.items() if k.startswith("v.")}
    x = fbank_btf.double().unsqueeze(1).transpose(2, 3)  # (B, 1, F, T)
    x = F.conv2d(x, v["patch_embed.proj.weight"], v["patch_embed.proj.bias"], stride=(fstride, tstride))
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([v["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + v["pos_embed"]
    dim = x.shape[-1]
    E, N = v["layers.0.mixer.A_log"].shape
    R = v["layers.0.mixer.dt_proj.weight"].shape[1]
    depth = 1 + max(int(k.split(".")[1]) for k in v if k.startswith("layers."))

    def norm(t, prefix):
        return F.layer_norm(t, (dim,), v[f"{prefix}.weight"], v[f"{prefix}.bias"], eps=1e-5)

    def block(i, h, r):
        r = h if r is None else r + h
        mixer = {k[len(f"layers.{i}.mixer.") :]: t for k, t in v.items() if k.startswith(f"layers.{i}.mixer.")}
        return mixer_reference(mixer, E, R, N, True, norm(r, f"layers.{i}.norm")), r

    h, r = x, None
    for k in range(depth // 2):
        hf, rf = block(2 * k, h, r)
        hb, rb = block(2 * k + 1, h.flip(1), None if r is None else r.flip(1))
        h, r = hf + hb.flip(1), rf + rb.flip(1)
    y = norm(norm(r + h, "norm_f"), "norm_f")  # norm_f twice (docs/official.md §2)
    pooled = y[:, 1:].mean(1)
    pooled = F.layer_norm(pooled, (dim,), sd["mlp_head.0.weight"], sd["mlp_head.0.bias"])
    return pooled @ sd["mlp_head.1.weight"].T + sd["mlp_head.1.bias"]


def official_ssast_reference(state, fbank_btf, fstride, tstride):
    """SSAST's ASTModel finetuningavgtok written out (DeiT blocks, 2 prefix tokens), float64."""
    sd = {k.removeprefix("module."): v.double() for k, v in state.items()}
    v = {k[2:]: t for k, t in sd.items() if k.startswith("v.")}
    x = fbank_btf.double().unsqueeze(1).transpose(2, 3)
    x = F.conv2d(x, v["patch_embed.proj.weight"], v["patch_embed.proj.bias"], stride=(fstride, tstride))
    x = x.flatten(2).transpose(1, 2)
    B, _, dim = x.shape
    x = torch.cat([v["cls_token"].expand(B, -1, -1), v["dist_token"].expand(B, -1, -1), x], dim=1) + v["pos_embed"]
    heads = {192: 3, 384: 6, 768: 12}[dim]
    depth = 1 + max(int(k.split(".")[1]) for k in v if k.startswith("blocks."))

    def ln(t, prefix):
        return F.layer_norm(t, (dim,), v[f"{prefix}.weight"], v[f"{prefix}.bias"], eps=1e-6)

    for i in range(depth):
        b = f"blocks.{i}."
        qkv = (ln(x, b + "norm1") @ v[b + "attn.qkv.weight"].T + v[b + "attn.qkv.bias"]).view(
            B, -1, 3, heads, dim // heads
        )
        q, k, val = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(-1)
        out = (attn @ val).transpose(1, 2).reshape(B, -1, dim)
        x = x + out @ v[b + "attn.proj.weight"].T + v[b + "attn.proj.bias"]
        hidden = F.gelu(ln(x, b + "norm2") @ v[b + "mlp.fc1.weight"].T + v[b + "mlp.fc1.bias"])
        x = x + hidden @ v[b + "mlp.fc2.weight"].T + v[b + "mlp.fc2.bias"]
    pooled = ln(x, "norm")[:, 2:].mean(1)
    pooled = F.layer_norm(pooled, (dim,), sd["mlp_head.0.weight"], sd["mlp_head.0.bias"])
    return pooled @ sd["mlp_head.1.weight"].T + sd["mlp_head.1.bias"]
