import torch

from src.models.components.vit import SSAST_SIZES
from tests.helpers.encoders import make_encoder


def test_ssast_presets_and_shapes():
    for size, (dim, heads) in {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}.items():
        assert (SSAST_SIZES[size].embed_dim, SSAST_SIZES[size].num_heads) == (dim, heads)
        encoder = make_encoder("ssast", size, depth=2, target_length=160).eval()
        assert encoder.blocks[0].attn.num_heads == heads
        with torch.no_grad():
            out = encoder(torch.randn(2, 1, 128, 160))
        assert out.shape == (2, 2 + 80, dim)  # cls + distillation token, then patches


def test_twelve_layers_and_ssast_key_names():
    encoder = make_encoder("ssast", "tiny")
    assert len(encoder.blocks) == 12
    keys = set(encoder.state_dict())
    expected = ["cls_token", "dist_token", "pos_embed", "patch_embed.proj.weight", "blocks.11.attn.qkv.weight"]
    expected += ["blocks.0.attn.proj.bias", "blocks.0.mlp.fc2.weight", "blocks.0.norm2.bias", "norm.weight"]
    assert set(expected) <= keys
    assert encoder.pos_embed.shape == (1, 514, 192)


def test_explicit_attention_equals_sdpa():
    encoder = make_encoder("ssast", "tiny", depth=2, target_length=160).eval()
    x = torch.randn(2, 1, 128, 160)
    with torch.no_grad():
        fused = encoder(x)
        encoder.set_attention("explicit")
        explicit = encoder(x)
    torch.testing.assert_close(fused, explicit, rtol=1e-4, atol=1e-5)


def test_ssast_shares_the_tokenizer_and_mask_path():
    encoder = make_encoder("ssast", "tiny", depth=1, target_length=160, mask_token=True)
    x = torch.randn(1, 1, 128, 160)
    mask = torch.zeros(1, 80, dtype=torch.bool)
    mask[0, 3] = True
    tokens = encoder.embed(x, mask)
    torch.testing.assert_close(tokens[0, 2 + 3], encoder.mask_embed[0, 0] + encoder.pos_embed[0, 2 + 3])
