"""Official SSAMBA and SSAST checkpoints -> this project's encoder (and heads), strictly.

    python -m src.models.convert ssamba --ckpt amba_tiny_400.pth --out exports/amba_tiny_400
    python -m src.models.convert ssamba --ckpt best_audio_model.pth --out exports/ks2 \
        --target-length 128 --fstride 10 --tstride 10      # a fine-tuned one: say its input and stride
    python -m src.models.convert ssast --ckpt SSAST-Tiny-Patch-400.pth --out exports/ssast_tiny
    python -m src.models.convert ssamba --hub attentionisallyouneed369/ssamba --file amba_tiny_400.pth \
        --out exports/amba_tiny_400                        # from the Hub, through its cache

The checkpoint is read with torch.load(weights_only=True). Every key is mapped or dropped with a
reason (printed); an unknown key stops the conversion. The result is an export folder (see
src/models/pretrained.py) that `from_pretrained` and `model.pretrained=` read, plus `heads.safetensors`
with the SSL heads (cpredlayer, gpredlayer) or the fine-tuned mlp_head, when present.

Layouts (docs/official.md §4): `module.` from nn.DataParallel; the encoder under `v.`
(v.head is Vim's unused classifier); `p_input_fdim` / `p_input_tdim` give the pretraining input;
`mask_embed`, `cpredlayer.*`, `gpredlayer.*` in pretraining checkpoints; `mlp_head.0/1` (LayerNorm,
Linear) in fine-tuned ones. LayerNorm or RMSNorm is told apart by `layers.0.norm.bias`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from safetensors.torch import save_file

from src.models.components import build_encoder, encoder_config
from src.models.hub import download
from src.models.pretrained import load_strict, read_checkpoint, save_encoder
from src.utils.errors import UserError, command
from src.utils.io import atomic_path

HEAD_PREFIXES = ("cpredlayer.", "gpredlayer.", "mlp_head.")
# the official pretraining normalised with AudioSet's fbank statistics (docs/official.md §1)
OFFICIAL_NORMALISATION = {"mean": -4.2677393, "std": 4.5689974}


def _strip(state: dict) -> dict:
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def _grid_input(state: dict, patch, fstride, tstride, num_mel_bins, target_length, num_prefix) -> dict:
    """Patch shape, input size and stride (encoder arguments): from p_input_* (pretraining
    checkpoints, stride = patch), or as given, checked against the positional embedding's length."""
    if "p_input_fdim" in state:
        num_mel_bins, target_length = int(state["p_input_fdim"]), int(state["p_input_tdim"])
        fstride, tstride = fstride or patch[0], tstride or patch[1]
    if not (num_mel_bins and target_length and fstride and tstride):
        raise UserError(
            "this checkpoint has no p_input_fdim/p_input_tdim (a fine-tuned one): pass --target-length, "
            "--fstride and --tstride as used for fine-tuning (e.g. 128 / 10 / 10 for Speech Commands)"
        )
    f = (num_mel_bins - patch[0]) // fstride + 1
    t = (target_length - patch[1]) // tstride + 1
    tokens = state["v.pos_embed"].shape[1] - num_prefix
    if f * t != tokens:
        raise UserError(
            f"input {num_mel_bins}x{target_length} with stride {fstride}x{tstride} gives {f}x{t} = {f * t} patches, "
            f"but the checkpoint's positional embedding has {tokens}; check --target-length / --fstride / --tstride"
        )
    return {
        "fshape": patch[0],
        "tshape": patch[1],
        "num_mel_bins": num_mel_bins,
        "target_length": target_length,
        "fstride": fstride,
        "tstride": tstride,
    }


def _read_layout(state: dict, marker: str, blocks: str, kind: str):
    """(state without module., width, depth, patch shape), checking the layout by a marker key."""
    state = _strip(state)
    if marker not in state:
        raise UserError(f"not an {kind} checkpoint (no {marker}); use the other converter kind")
    dim = state["v.cls_token"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(rf"v\.{blocks}\.(\d+)\.", k)))
    return state, dim, depth, tuple(state["v.patch_embed.proj.weight"].shape[-2:])


def convert_ssamba(state: dict, num_mel_bins=None, target_length=None, fstride=None, tstride=None):
    """(encoder, heads state, report) from an official SSAMBA (AMBAModel) state dict."""
    state, dim, depth, patch = _read_layout(state, "v.layers.0.mixer.A_b_log", "layers", "SSAMBA")
    d_inner, d_state = state["v.layers.0.mixer.A_log"].shape
    grid = _grid_input(state, patch, fstride, tstride, num_mel_bins, target_length, 1)
    config = {
        "backbone": "ssamba",
        "size": None,
        "quirks": "official",
        "embed_dim": dim,
        "depth": depth,
        "d_state": d_state,
        "expand": d_inner // dim,
        "d_conv": state["v.layers.0.mixer.conv1d.weight"].shape[-1],
        "norm": "layernorm" if "v.layers.0.norm.bias" in state else "rmsnorm",
        **grid,
    }
    return _assemble(state, config, {"v.head.weight", "v.head.bias"})


def convert_ssast(state: dict, num_mel_bins=None, target_length=None, fstride=None, tstride=None):
    """(encoder, heads state, report) from an official SSAST (ASTModel) state dict."""
    state, dim, depth, patch = _read_layout(state, "v.blocks.0.attn.qkv.weight", "blocks", "SSAST")
    heads = {192: 3, 384: 6, 768: 12}.get(dim)
    if heads is None:
        raise UserError(f"SSAST width {dim} is not tiny/small/base (192/384/768)")
    if "v.dist_token" not in state:
        raise UserError("SSAST checkpoints without a distillation token (base_nokd) are not supported")
    grid = _grid_input(state, patch, fstride, tstride, num_mel_bins, target_length, 2)
    config = {
        "backbone": "ssast",
        "size": None,
        "embed_dim": dim,
        "num_heads": heads,
        "depth": depth,
        **grid,
    }
    return _assemble(state, config, {"v.head.weight", "v.head.bias", "v.head_dist.weight", "v.head_dist.bias"})


def _assemble(state: dict, config: dict, unused: set[str]):
    encoder_state, heads, notes = {}, {}, []
    for key, value in state.items():
        if key.startswith("v."):
            if key in unused:
                notes.append(f"dropped {key}: the backbone's unused ImageNet-style classifier")
            else:
                encoder_state[key[2:]] = value
        elif key == "mask_embed":
            encoder_state["mask_embed"] = value
        elif key in ("p_input_fdim", "p_input_tdim"):
            notes.append(f"read {key} = {int(value)} (the pretraining input size)")
        elif key.startswith(HEAD_PREFIXES):
            heads[key] = value
        else:
            raise UserError(f"unknown key {key!r}: not an official SSAMBA/SSAST layout this converter knows")
    encoder = build_encoder(encoder_config(**config, mask_token="mask_embed" in encoder_state))
    load_strict(encoder, encoder_state, "the official checkpoint")
    if heads:
        notes.append(f"kept heads: {sorted({k.split('.')[0] for k in heads})}")
    return encoder, heads, notes


def convert_to_export(
    kind: str,
    out: str | Path,
    ckpt: str | Path | None = None,
    hub: str | None = None,
    file: str | None = None,
    revision: str | None = None,
    num_mel_bins: int = 128,
    target_length: int | None = None,
    fstride: int | None = None,
    tstride: int | None = None,
) -> list[str]:
    """Convert an official checkpoint, a file (ckpt) or one in a Hub repository (hub, file, at
    revision, through the Hub cache), into an export folder at out; returns what was done, a line each."""
    if (ckpt is None) == (hub is None):
        raise UserError("give an official checkpoint's path (--ckpt) or a Hub repository (--hub) with --file")
    if hub is not None and not file:
        raise UserError("--hub needs --file: the checkpoint's name in the repository (docs/interop.md lists them)")
    path = download(hub, file, revision) if hub is not None else Path(ckpt)
    convert = convert_ssamba if kind == "ssamba" else convert_ssast
    encoder, heads, lines = convert(read_checkpoint(path), num_mel_bins, target_length, fstride, tstride)
    origin = f"{hub}{f'@{revision}' if revision else ''}:{file}" if hub is not None else str(ckpt)
    out = Path(out)
    save_encoder(encoder, out, data=OFFICIAL_NORMALISATION, extra={"converted_from": origin})
    if heads:
        with atomic_path(out / "heads.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in heads.items()}, str(tmp))
    kept = "" if encoder.mask_embed is None else ", the SSL mask embedding included"
    return [*lines, f"wrote {out} ({sum(p.numel() for p in encoder.parameters()):,} encoder parameters{kept})"]


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.models.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["ssamba", "ssast"])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", type=Path, help="an official checkpoint file")
    source.add_argument("--hub", metavar="ORG/NAME", help="a Hub repository of official checkpoints (with --file)")
    parser.add_argument("--file", help="with --hub: the checkpoint's file name, e.g. amba_tiny_400.pth")
    parser.add_argument("--revision", help="with --hub: a branch, tag or commit (default: main)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-mel-bins", type=int, default=128)
    parser.add_argument("--target-length", type=int, help="fbank frames of the fine-tuning input")
    parser.add_argument("--fstride", type=int)
    parser.add_argument("--tstride", type=int)
    args = parser.parse_args(argv)
    settings = {k: v for k, v in vars(args).items() if k not in ("kind", "out")}
    lines = convert_to_export(args.kind, args.out, **settings)
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
