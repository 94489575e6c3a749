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


def bimamba_reference(mixer, hidden):
    """The bimamba-v2 forward written from official_ssamba.md 1.6, in float64, with the step-by-step scan."""
    p = {k: v.double() for k, v in mixer.state_dict().items()}
    E, R, N = mixer.d_inner, mixer.dt_rank, mixer.d_state
    xz = (hidden.double() @ p["in_proj.weight"].T).transpose(1, 2)  # (B, 2E, L)
    x, z = xz[:, :E], xz[:, E:]

    def branch(x, z, sfx):
        length = x.shape[-1]
        xc = F.conv1d(F.pad(x, (3, 0)), p[f"conv1d{sfx}.weight"], p[f"conv1d{sfx}.bias"], groups=E)[..., :length]
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
    if mixer.divide_out:
        out = out / 2
    return out.transpose(1, 2) @ p["out_proj.weight"].T
