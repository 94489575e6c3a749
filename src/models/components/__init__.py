"""Model components: plain nn.Modules with no Lightning or Hydra inside.

Every encoder is built from its config dataclass (SSAMBAConfig, SSASTConfig), owns it as
`encoder.config`, and is saved with `config.to_dict()`, which lists the backbone and every field.

    config = encoder_config("ssamba", size="small", quirks="clean", depth=12)
    encoder = build_encoder(config)
"""

from __future__ import annotations

from dataclasses import fields, replace

from src.models.components.encoder import QUIRKS, SSAMBA_SIZES, SSAMBAConfig, SSAMBAEncoder
from src.models.components.patching import PatchConfig, PatchEncoder
from src.models.components.vit import SSAST_SIZES, SSASTConfig, SSASTEncoder
from src.utils.errors import UserError

BACKBONES = {
    "ssamba": (SSAMBAConfig, SSAMBAEncoder, SSAMBA_SIZES),
    "ssast": (SSASTConfig, SSASTEncoder, SSAST_SIZES),
}
# what the size presets set: an explicit value must agree with the size, or size must be null
SIZE_FIELDS = ("embed_dim", "num_heads")
# names the configs had before the EncoderConfig redesign (exports and checkpoints up to eb12644)
LEGACY_NAMES = {"input_tdim": "target_length", "input_fdim": "num_mel_bins"}


def encoder_config(backbone: str = "ssamba", size: str | None = "tiny", quirks: str | None = None, **values):
    """A backbone's config from a size preset (tiny | small | base, or None for the dataclass
    defaults), a quirks preset (SSAMBA: official | clean) and explicit field values, which win over
    the quirks but must agree with the size (give size=None to set the width yourself)."""
    if backbone not in BACKBONES:
        raise UserError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    config_class, _, sizes = BACKBONES[backbone]
    names = {f.name for f in fields(config_class)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"{backbone} encoders have no setting {unknown}; the settings are {sorted(names)}")
    if size is None:
        base = config_class()
    elif size in sizes:
        base = sizes[size]
        for name in SIZE_FIELDS:
            if name in values and values[name] != getattr(base, name):
                raise UserError(
                    f"encoder.size={size} means {name}={getattr(base, name)}, but {name}={values[name]} was given; "
                    f"set encoder.size=null to choose the {name} yourself"
                )
    else:
        raise UserError(f"unknown {backbone} size {size!r}; choose one of {sorted(sizes)} or null")
    if quirks is not None:
        if backbone != "ssamba" or quirks not in QUIRKS:
            raise UserError(f"unknown quirks preset {quirks!r} for {backbone}; SSAMBA has {sorted(QUIRKS)}")
        values = {**QUIRKS[quirks], **values}
    return replace(base, **values)


def _complete(values: dict) -> PatchConfig | None:
    """The config of a dict that names the backbone and every field (what to_dict writes), else None."""
    config_class = BACKBONES.get(values.get("backbone"), (None,))[0]
    if config_class is None or set(values) != {"backbone"} | {f.name for f in fields(config_class)}:
        return None
    return config_class(**{k: v for k, v in values.items() if k != "backbone"})


def as_config(values: dict) -> PatchConfig:
    """A module's `encoder` argument: a recipe for encoder_config (Hydra's encoder group), a complete
    config dict (what a checkpoint's hyperparameters hold) or a pre-redesign one (an old checkpoint's)."""
    if _complete(values) is not None or set(values) & set(LEGACY_NAMES):
        return config_from_dict(values)
    return encoder_config(**values)


def config_from_dict(saved: dict) -> PatchConfig:
    """The config an export or checkpoint saved. Today's saves list every field; a save from before
    the redesign is a recipe (backbone, size, quirks, overrides, old names), rebuilt as it was then:
    the official quirks by default and explicit values over the size."""
    complete = _complete(saved)
    if complete is not None:
        return complete
    if not isinstance(saved, dict):
        raise UserError(f"the encoder config is a {type(saved).__name__}, not a mapping of settings")
    saved = dict(saved)
    backbone = saved.pop("backbone", "ssamba")
    if backbone not in BACKBONES:
        raise UserError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    config_class, _, sizes = BACKBONES[backbone]
    values = {LEGACY_NAMES.get(k, k): v for k, v in saved.items() if k not in ("size", "quirks")}
    unknown = sorted(set(values) - {f.name for f in fields(config_class)})
    if unknown:
        raise UserError(f"the saved {backbone} config has unknown settings {unknown}: not written by this project")
    if saved.get("size", "tiny") not in sizes or saved.get("quirks", "official") not in QUIRKS:
        raise UserError(f"the saved {backbone} config names an unknown size or quirks preset")
    base = sizes[saved.get("size", "tiny")]
    quirks = saved.get("quirks", "official") if backbone == "ssamba" else None
    return replace(base, **{**(QUIRKS[quirks] if quirks else {}), **values})


def build_encoder(config: PatchConfig) -> PatchEncoder:
    """The encoder a config describes (randomly initialised)."""
    for config_class, encoder_class, _ in BACKBONES.values():
        if type(config) is config_class:
            return encoder_class(config)
    raise TypeError(f"not an encoder config: {type(config).__name__}")


__all__ = [
    "SSAMBAEncoder",
    "SSAMBAConfig",
    "SSASTConfig",
    "SSASTEncoder",
    "as_config",
    "build_encoder",
    "config_from_dict",
    "encoder_config",
]
