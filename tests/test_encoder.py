import pytest
import torch

from src.models.components import build_encoder, config_from_dict, encoder_config
from src.models.components.encoder import QUIRKS, SSAMBA_SIZES, SSAMBAConfig
from tests.helpers.encoders import make_encoder

SMALL = dict(depth=4, target_length=160)  # 8 x 10 patches


@pytest.mark.parametrize("size,dim", [("tiny", 192), ("small", 384), ("base", 768)])
@pytest.mark.parametrize("quirks", ["official", "clean"])
def test_every_preset_builds_and_gives_token_features(size, dim, quirks):
    encoder = make_encoder("ssamba", size, quirks, **SMALL).eval()
    with torch.no_grad():
        out = encoder(torch.randn(2, 1, 128, 160))
    assert out.shape == (2, 1 + 80, dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size,count", [("tiny", 6_922_176), ("small", 25_345_920), ("base", 96_698_112)])
def test_full_preset_parameter_counts_match_the_official_encoder(size, count):
    encoder = make_encoder("ssamba", size, "official")
    assert sum(p.numel() for p in encoder.parameters()) == count


def test_official_key_layout():
    keys = set(make_encoder("ssamba", "tiny", depth=2).state_dict())
    expected = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm_f.weight"]
    expected += ["norm_f.bias", "layers.1.norm.bias", "layers.1.mixer.dt_proj_b.bias", "layers.0.mixer.A_b_log"]
    assert set(expected) <= keys
    assert make_encoder("ssamba", "tiny", depth=2).pos_embed.shape == (1, 513, 192)
    rms = set(make_encoder("ssamba", "tiny", depth=2, norm="rmsnorm").state_dict())
    assert "layers.0.norm.weight" in rms and "layers.0.norm.bias" not in rms


def manual_official_forward(encoder, x):
    """docs/official.md §2 written out: pairs with a flipped second layer, then norm_f twice."""
    h, r = encoder.embed(x), None
    for k in range(encoder.config.depth // 2):
        hf, rf = encoder.layers[2 * k](h, r)
        hb, rb = encoder.layers[2 * k + 1](h.flip(1), None if r is None else r.flip(1))
        h, r = hf + hb.flip(1), rf + rb.flip(1)
    return encoder.norm_f(encoder.norm_f(r + h))


def test_pair_flip_and_double_final_norm_follow_the_spec():
    encoder = make_encoder("ssamba", "tiny", "official", **SMALL).eval()
    x = torch.randn(1, 1, 128, 160)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), manual_official_forward(encoder, x))


def test_clean_preset_is_a_plain_stack_with_one_final_norm():
    encoder = make_encoder("ssamba", "tiny", "clean", **SMALL).eval()
    x = torch.randn(1, 1, 128, 160)
    with torch.no_grad():
        h, r = encoder.embed(x), None
        for layer in encoder.layers:
            h, r = layer(h, r)
        torch.testing.assert_close(encoder(x), encoder.norm_f(r + h))
    assert all(torch.all(layer.mixer.dt_proj_b.bias != 0) for layer in encoder.layers)


def test_drop_path_schedule_is_vims():
    encoder = make_encoder("ssamba", "tiny", depth=24, drop_path_rate=0.1)
    rates = encoder.drop_path_rates().tolist()  # every layer's, then the final add's
    assert len(rates) == 25
    assert rates[0] == 0 and rates[1] == 0
    assert rates[23] == pytest.approx(0.1 * 22 / 23)
    assert rates[24] == pytest.approx(0.1)


def test_drop_path_draws_each_layer_at_its_rate_and_scales_what_it_keeps():
    encoder = make_encoder("ssamba", "tiny", depth=4, drop_path_rate=0.5).train()
    hidden = torch.zeros(20000, 1, 1)  # only its batch size and device are read
    scales = encoder.drop_path_scales(hidden)
    rates = encoder.drop_path_rates()
    assert scales.shape == (5, 20000)
    for layer, (row, p) in enumerate(zip(scales, rates.tolist())):
        kept = row != 0
        torch.testing.assert_close(row[kept], torch.full_like(row[kept], 1 / (1 - p)))
        assert abs((~kept).float().mean().item() - p) < 0.015, f"layer {layer} drops at its rate {p}"
    assert not torch.equal(scales[3] != 0, scales[4] != 0), "each layer draws its own samples"
    assert encoder.eval().drop_path_scales(hidden) is None


def test_return_hidden_gives_every_layer_or_pair():
    x = torch.randn(1, 1, 128, 160)
    with torch.no_grad():
        out, states = make_encoder("ssamba", "tiny", "official", **SMALL).eval()(x, return_hidden=True)
        assert len(states) == 2 and all(s.shape == out.shape for s in states)
        _, states = make_encoder("ssamba", "tiny", "clean", **SMALL).eval()(x, return_hidden=True)
        assert len(states) == 4


@pytest.mark.parametrize("frames", [100, 400, 3000])
def test_any_input_length_works_at_inference(frames):
    encoder = make_encoder("ssamba", "tiny", depth=2).eval()  # built for 1024 frames
    with torch.no_grad():
        out = encoder(torch.randn(1, 1, 128, frames))
    assert out.shape == (1, 1 + 8 * ((frames - 16) // 16 + 1), 192)


def test_mask_swaps_masked_patches_for_the_mask_embedding_before_positions():
    encoder = make_encoder("ssamba", "tiny", depth=2, target_length=160, mask_token=True)
    x = torch.randn(2, 1, 128, 160)
    mask = torch.zeros(2, 80, dtype=torch.bool)
    mask[0, [0, 5, 79]] = True
    tokens = encoder.embed(x, mask)
    plain = encoder.embed(x)
    expected_masked = encoder.mask_embed[0, 0] + encoder.pos_embed[0, 1 + torch.tensor([0, 5, 79])]
    torch.testing.assert_close(tokens[0, 1 + torch.tensor([0, 5, 79])], expected_masked)
    keep = ~mask
    torch.testing.assert_close(tokens[:, 1:][keep], plain[:, 1:][keep])
    torch.testing.assert_close(tokens[:, 0], plain[:, 0])  # cls untouched
    # masked content cannot leak: changing the masked patch's input leaves the tokens unchanged
    x2 = x.clone()
    x2[0, :, 0:16, 0:16] += 10
    torch.testing.assert_close(encoder.embed(x2, mask)[0, 1], tokens[0, 1])


def test_mask_needs_a_mask_token():
    encoder = make_encoder("ssamba", "tiny", depth=2, target_length=160)
    with pytest.raises(ValueError, match="mask_token=True"):
        encoder.embed(torch.randn(1, 1, 128, 160), torch.zeros(1, 80, dtype=torch.bool))


def test_resize_input_copies_the_kernel_and_adapts_positions():
    encoder = make_encoder("ssamba", "tiny", depth=2)
    kernel = encoder.patch_embed.proj.weight.detach().clone()
    encoder.resize_input(128, fstride=10, tstride=10)
    assert encoder.grid == (12, 12) and encoder.pos_embed.shape == (1, 145, 192)
    torch.testing.assert_close(encoder.patch_embed.proj.weight, kernel)
    assert encoder.patch_embed.proj.stride == (10, 10)
    assert encoder(torch.randn(1, 1, 128, 128)).shape == (1, 145, 192)


def test_bad_input_shape_and_presets_are_explained():
    encoder = make_encoder("ssamba", "tiny", depth=2)
    with pytest.raises(ValueError, match=r"\(batch, 1, mel bins, frames\)"):
        encoder(torch.randn(1, 128, 1024))
    with pytest.raises(ValueError, match="unknown ssamba size"):
        make_encoder("ssamba", "huge")
    with pytest.raises(ValueError, match="unknown backbone"):
        make_encoder("conformer")
    with pytest.raises(ValueError, match="even depth"):
        SSAMBAConfig(depth=3, pair_flip=True)
    assert set(QUIRKS) == {"official", "clean"}


def test_a_size_and_an_explicit_width_cannot_contradict_each_other():
    with pytest.raises(ValueError, match="encoder.size=tiny means embed_dim=192.*size=null"):
        encoder_config("ssamba", "tiny", embed_dim=64)
    assert encoder_config("ssamba", "tiny", embed_dim=192).embed_dim == 192  # agreeing is fine
    assert encoder_config("ssamba", None, embed_dim=64).embed_dim == 64
    with pytest.raises(ValueError, match="means num_heads=3"):
        encoder_config("ssast", "tiny", num_heads=4)
    with pytest.raises(ValueError, match=r"no setting \['input_tdim'\]"):
        encoder_config("ssamba", "tiny", input_tdim=128)


def test_presets_are_config_instances_and_quirks_set_flags_that_explicit_values_override():
    assert SSAMBA_SIZES["small"] == SSAMBAConfig(embed_dim=384)
    clean = encoder_config("ssamba", "tiny", "clean", pos_resize="official")
    assert not clean.pair_flip and clean.backward_dt_init == "mamba" and clean.pos_resize == "official"


def test_the_encoder_owns_its_config_and_a_saved_config_rebuilds_it_verbatim():
    config = encoder_config("ssamba", "small", "clean", depth=2, target_length=128)
    encoder = build_encoder(config)
    assert encoder.config is config
    saved = config.to_dict()
    assert saved["backbone"] == "ssamba" and saved["target_length"] == 128 and "size" not in saved
    assert config_from_dict(saved) == config
    encoder.resize_input(256, 10, 10)  # fine-tuning's resize is recorded in the config it saves
    assert encoder.config.to_dict()["target_length"] == 256 and encoder.config.fstride == 10
    assert config.target_length == 128  # the original config object is left alone
