"""Encoders from a recipe in one call, as the tests build many."""

from src.models.components import build_encoder, encoder_config


def make_encoder(backbone: str = "ssamba", size: str | None = "tiny", quirks: str | None = None, **values):
    return build_encoder(encoder_config(backbone, size, quirks, **values))
