"""Pretrained encoders in and out, without Lightning or Hydra: export folders and checkpoints.

An export is a folder with `encoder.safetensors` (with the SSL mask embedding when the encoder has
one) and `config.json`: {"encoder": the encoder's config.to_dict(), "data": {"mean", "std", ...}: the
normalisation of the data it was trained on, ...}. The input length and mel-bin count are the
encoder config's target_length and num_mel_bins. A converted pretraining checkpoint adds
`heads.safetensors` (the SSL heads). `from_pretrained(path)` rebuilds the encoder; wherever a folder
is read, a Hub repository id (org/name[@revision]) is read too (hub.py).
Lightning checkpoints are read with torch.load(weights_only=True): no pickled code runs.
The command that writes an export from a checkpoint is src/export.py.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from src.models.components import build_encoder, config_from_dict
from src.models.components.patching import PatchConfig, patch_grid
from src.models.hub import resolve
from src.utils.errors import MissingInput, UserError
from src.utils.io import atomic_path, write_json

WEIGHTS, CONFIG = "encoder.safetensors", "config.json"


def save_encoder(encoder: nn.Module, out_dir: str | Path, data: dict | None = None, extra: dict | None = None) -> Path:
    """Write an export folder. data: {"mean", "std"} of the data the encoder was trained on, which
    the embedding front ends normalise with (they refuse an export without it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the mask embedding goes along when the encoder has one (SSL can continue from the export)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    meta = {"encoder": encoder.config.to_dict(), **({"data": dict(data)} if data else {}), **(extra or {})}
    write_json(out_dir / CONFIG, meta)
    return out_dir


MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KiB
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit


def export_config(path: str | Path) -> tuple[dict, PatchConfig]:
    """(config.json, its encoder config) of an export folder, checked as read_export checks them,
    without reading the weights."""
    folder = Path(path)
    config_file = folder / CONFIG
    if not config_file.exists():
        raise MissingInput(f"{folder}: not an encoder export (needs {CONFIG}); see src/export.py")
    if not config_file.is_file():
        raise UserError(f"{config_file}: not a regular file (a device, a pipe or a folder); export the encoder again")
    if config_file.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{config_file}: {config_file.stat().st_size} bytes, not an export's config; export again")
    try:
        meta = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{config_file}: not valid JSON ({e}); export the encoder again") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("encoder"), dict):
        raise UserError(f"{config_file}: has no `encoder` settings; not an export of this project")
    return meta, _config(meta["encoder"], config_file)


def read_export(path: str | Path) -> tuple[dict, dict]:
    """(config.json, state dict) of an export folder, each checked before it is used: config.json a
    small regular file holding a JSON object with an `encoder` mapping, encoder.safetensors whole
    (its header's tensors end where the file does), the config's sizes those of the weights (so a
    damaged config cannot make the model huge), and the weights finite."""
    path = Path(path)
    folder = path.parent if path.suffix == ".safetensors" else path
    weights = folder / WEIGHTS
    if not weights.exists() or not (folder / CONFIG).exists():
        raise MissingInput(f"{folder}: not an encoder export (needs {WEIGHTS} and {CONFIG}); see src/export.py")
    if not weights.is_file():
        raise UserError(f"{weights}: not a regular file (a device, a pipe or a folder); export the encoder again")
    meta, config = export_config(folder)
    shapes = safetensors_shapes(weights)
    check_config_fits_weights(config, shapes, str(folder))
    state = load_file(str(weights))
    check_finite(state, str(weights))
    return meta, state


def _config(saved, source: Path) -> PatchConfig:
    """config_from_dict, its errors naming the file the config came from."""
    try:
        return config_from_dict(saved)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from a safetensors file's header, the file checked whole first."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= min(size - 8, MAX_HEADER_BYTES):
            raise UserError(f"{path}: not a safetensors file, or cut short; export the encoder again")
        try:
            header = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"{path}: its header is damaged; export the encoder again") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"} if isinstance(header, dict) else {}
    try:
        end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
        shapes = {k: tuple(int(n) for n in v["shape"]) for k, v in tensors.items()}
    except (KeyError, TypeError, ValueError, IndexError):
        raise UserError(f"{path}: its header is damaged; export the encoder again") from None
    if 8 + length + end != size:
        raise UserError(
            f"{path}: {size} bytes where its header needs {8 + length + end}: cut short or damaged; "
            "export the encoder again"
        )
    return shapes


def check_config_fits_weights(config: PatchConfig, shapes: dict, source: str) -> None:
    """The config's width, depth, patch size and positions are those of the weights, checked on
    shapes alone before the model is built."""
    numbered = [k.split(".")[1] for k in shapes if k.startswith(("layers.", "blocks."))]
    blocks = {int(n) for n in numbered if n.isdigit()}
    f_dim, t_dim = patch_grid(
        config.num_mel_bins, config.target_length, config.fshape, config.tshape, config.fstride, config.tstride
    )
    positions = shapes.get("pos_embed", (0, 0))[1] if len(shapes.get("pos_embed", ())) == 3 else None
    prefix = positions - f_dim * t_dim if positions is not None else None
    found = {
        "embed_dim": shapes.get("cls_token", (None,))[-1],
        "depth": max(blocks) + 1 if blocks else 0,
        "fshape x tshape": tuple(shapes.get("patch_embed.proj.weight", (None, None, None, None))[2:]),
        "positions": positions,
    }
    wanted = {
        "embed_dim": config.embed_dim,
        "depth": config.depth,
        "fshape x tshape": (config.fshape, config.tshape),
        "positions": f_dim * t_dim + (prefix if prefix in (1, 2) else 1),
    }
    wrong = [f"{k} {wanted[k]} vs {found[k]}" for k in wanted if wanted[k] != found[k]]
    if wrong:
        raise UserError(
            f"{source}: its config does not describe its weights (config vs weights: {', '.join(wrong)}); "
            "the config or the weights are damaged, or not this project's"
        )


def check_finite(state: dict, source: str) -> None:
    """Refuse NaN or inf weights (SSAMBA_ALLOW_NONFINITE_WEIGHTS=1 lets them through, for debugging)."""
    if os.environ.get("SSAMBA_ALLOW_NONFINITE_WEIGHTS") == "1":
        return
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(
            f"{source}: {len(bad)} tensors hold NaN or inf (first: {bad[0]}); the weights are broken "
            "(a diverged training?); SSAMBA_ALLOW_NONFINITE_WEIGHTS=1 loads them anyway"
        )


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """torch.load(weights_only=True) of a checkpoint, a refusal or a damaged file as one UserError.
    mmap: map the tensors instead of reading them (a check that the file loads, at little cost)."""
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"{path}: checkpoint not found; pass the path of a .ckpt or an export folder")
    try:
        if mmap:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):  # the legacy (non-zip) format cannot be mapped; read it
                    raise
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise UserError(f"{path}: not a readable checkpoint ({e}); it may be truncated or not a checkpoint") from e
        raise UserError(
            f"{path}: refused to load (it holds pickled objects beyond tensors and plain containers, "
            "which weights_only loading does not run). Only load checkpoints you trust "
            "by converting them first; see docs/interop.md"
        ) from e
    except Exception as e:  # EOFError, a zip reader's RuntimeError, a KeyError: truncated or not a checkpoint
        first = str(e).split(". ")[0].splitlines()[0] if str(e) else ""
        raise UserError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {first}); it may be truncated (a write "
            "that was killed) or not a checkpoint at all"
        ) from e


def read_pretrained(path: str | Path, revision: str | None = None) -> tuple[PatchConfig, dict, dict | None]:
    """(encoder config, encoder state dict, the data's normalisation {"mean", "std"} or None) of an
    export folder, a Hub repository id holding one (org/name[@revision], src/models/hub.py) or a
    Lightning checkpoint of this project."""
    path = resolve(path, revision)
    if path.is_dir() or path.suffix == ".safetensors":
        meta, state = read_export(path)
        return _config(meta["encoder"], path), state, meta.get("data")
    ckpt = read_checkpoint(path)
    hparams = ckpt.get("hyper_parameters", {})
    if "encoder" not in hparams or "state_dict" not in ckpt:
        raise UserError(f"{path}: not a checkpoint of this project (no hyper_parameters.encoder / state_dict)")
    state = {k[len("encoder.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
    config = _config(hparams["encoder"], path)
    check_config_fits_weights(config, {k: tuple(v.shape) for k, v in state.items()}, str(path))
    check_finite(state, str(path))
    return config, state, ckpt.get("data")


def check_backbone(saved: PatchConfig, asked: PatchConfig, source: str) -> None:
    """A pretrained encoder of another backbone than the run's `encoder=` is refused: the run would
    train one backbone while its config and log name the other (an SSAMBA-vs-SSAST comparison would
    measure one model twice)."""
    if saved.backbone != asked.backbone:
        raise UserError(
            f"{source} holds a {saved.backbone} encoder but this run asks for encoder={asked.backbone}; "
            f"pass encoder={saved.backbone} to fine-tune it, or an export of a {asked.backbone} encoder"
        )


def build_pretrained(config: PatchConfig, state: dict, source: str, mask_token: bool = False) -> nn.Module:
    """The encoder of config with the weights of state (strict: every weight must fit). The SSL mask
    embedding is loaded with mask_token=True (to continue SSL: then it must be there) and otherwise
    left out, as nothing but the SSL objective reads it."""
    if not mask_token:
        state = {k: v for k, v in state.items() if k != "mask_embed"}
    encoder = build_encoder(replace(config, mask_token=mask_token))
    load_strict(encoder, state, source)
    return encoder


def from_pretrained(path: str | Path, mask_token: bool = False, revision: str | None = None) -> nn.Module:
    """The encoder of an export folder, a Hub repository id (org/name, at revision: a branch, tag or
    commit) or a checkpoint, in eval mode (see build_pretrained)."""
    config, state, _ = read_pretrained(path, revision)
    return build_pretrained(config, state, str(path), mask_token).eval()


def check_fits(module: nn.Module, state: dict, source: str) -> None:
    """Raise a UserError naming what differs unless state has exactly module's keys and shapes."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise UserError(
            f"{source} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {wrong[:5]}; build the model as the checkpoint was (backbone, size, depth, input "
            "size, patch stride): pass the experiment=... and overrides it was trained with"
        )


def load_strict(module: nn.Module, state: dict, source: str) -> None:
    """load_state_dict(strict=True), with check_fits' readable error first."""
    check_fits(module, state, source)
    module.load_state_dict(state, strict=True)


def data_record(trainer) -> dict | None:
    """What checkpoints and exports record of the data a trainer runs: the normalisation {"mean",
    "std"}, the class names in the model's output order ("classes", for a classifier's data), a
    fingerprint of the training data ("fingerprint", the datamodule's) and the fbank settings
    ("fbank", what a processor needs besides the encoder's input length); None without a datamodule
    (a datamodule is duck-typed: models/ never imports data/)."""
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None or not hasattr(datamodule, "mean"):
        return None
    record = {"mean": float(datamodule.mean), "std": float(datamodule.std)}
    if hasattr(datamodule, "classes"):
        record["classes"] = list(datamodule.classes)
    if hasattr(datamodule, "fingerprint"):
        record["fingerprint"] = datamodule.fingerprint()
    if hasattr(datamodule, "fbank_settings"):
        record["fbank"] = datamodule.fbank_settings()
    return record
