"""Encoder weights in and out, without Lightning or Hydra.

An export is a folder with `encoder.safetensors` (with the SSL mask embedding when the encoder has
one) and `config.json` ({"encoder": build_encoder kwargs, "data": {mean, std, target_length, ...}});
a converted pretraining checkpoint adds `heads.safetensors` (the SSL heads). `from_pretrained(path)`
rebuilds the encoder.
Lightning checkpoints are read with torch.load(weights_only=True): no pickled code runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from src.models.components import build_encoder
from src.utils.io import atomic_path, write_json

WEIGHTS, CONFIG = "encoder.safetensors", "config.json"


def save_encoder(encoder: nn.Module, out_dir: str | Path, extra: dict | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = dict(getattr(encoder, "config", {}))
    config.pop("mask_token", None)
    # the mask embedding goes along when the encoder has one (SSL can continue from the export)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_json(out_dir / CONFIG, {"encoder": config, **(extra or {})})
    return out_dir


def read_export(path: str | Path) -> tuple[dict, dict]:
    """(config, state dict) of an export folder."""
    path = Path(path)
    folder = path.parent if path.suffix == ".safetensors" else path
    if not (folder / WEIGHTS).exists() or not (folder / CONFIG).exists():
        raise FileNotFoundError(f"{folder}: not an encoder export (needs {WEIGHTS} and {CONFIG}); see src/export.py")
    return json.loads((folder / CONFIG).read_text()), load_file(str(folder / WEIGHTS))


def from_pretrained(path: str | Path, mask_token: bool = False, **overrides) -> nn.Module:
    """Rebuild an exported encoder (strict: every weight must fit). The SSL mask embedding, which an
    export of pretraining holds, is loaded with mask_token=True (to continue SSL: then it must be
    there) and otherwise left out, as nothing but the SSL objective reads it."""
    config, state = read_export(path)
    if not mask_token:
        state.pop("mask_embed", None)
    encoder = build_encoder(**{**config["encoder"], **overrides}, mask_token=mask_token)
    load_strict(encoder, state, source=str(path))
    return encoder.eval()


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found; pass the path of a .ckpt or an export folder")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends
        raise ValueError(
            f"{path}: refused to load (it holds pickled objects beyond tensors and plain containers, "
            f"which weights_only loading does not run: {type(e).__name__}). Only load checkpoints you trust "
            "by converting them first; see docs/interop.md"
        ) from e


def encoder_from_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(encoder config, encoder state dict) from a Lightning checkpoint of this project or an export."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors":
        config, state = read_export(path)
        return config["encoder"], state
    ckpt = read_checkpoint(path)
    hparams = ckpt.get("hyper_parameters", {})
    if "encoder" not in hparams or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a checkpoint of this project (no hyper_parameters.encoder / state_dict)")
    state = {k[len("encoder.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
    return dict(hparams["encoder"]), state


def load_strict(module: nn.Module, state: dict, source: str, allow_unexpected=()) -> list[str]:
    """load_state_dict(strict=True) with a readable error; keys named in allow_unexpected may be
    left out of the model, and are returned as dropped."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and k not in allow_unexpected]
    wrong = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {wrong[:5]}; check that the model config (backbone, size, depth, input size, "
            "patch stride) matches the checkpoint"
        )
    dropped = [k for k in state if k not in own]
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    return dropped
