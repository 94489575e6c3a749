"""Model components: plain nn.Modules with no Lightning or Hydra inside."""

from src.models.components.encoder import AudioMambaEncoder, build_ssamba
from src.models.components.vit import SSASTEncoder, build_ssast

BACKBONES = {"ssamba": build_ssamba, "ssast": build_ssast}


def build_encoder(backbone: str = "ssamba", size: str = "tiny", **overrides):
    """One entry for every backbone: build_encoder("ssamba", "tiny", quirks="official", depth=4)."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    encoder = BACKBONES[backbone](size, **overrides)
    encoder.config = {"backbone": backbone, "size": size, **overrides}  # enough to rebuild it
    return encoder


__all__ = ["AudioMambaEncoder", "SSASTEncoder", "build_encoder", "build_ssamba", "build_ssast"]
