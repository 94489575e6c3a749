"""Official checkpoints, made with random values in the official key layout, converted and compared
with reference forwards written from the spec."""

import json

import pytest
import torch

from src.models.components import encoder_config
from src.models.convert import convert_ssamba, convert_ssast
from src.models.convert import main as convert_main
from src.models.pretrained import from_pretrained
from tests.helpers.encoders import make_encoder
from tests.helpers.reference import official_ssamba_reference, official_ssast_reference


def randomize(module):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.dim() == 1 and p.shape[0] < 64 else 0))
    return module


def official_layout(encoder, dim, classes=None, pretraining=True, extra_v_head=True):
    """A state dict shaped like the official code's torch.save(audio_model.state_dict())."""
    sd = {f"module.v.{k}": v.clone() for k, v in encoder.state_dict().items() if k != "mask_embed"}
    if extra_v_head:
        sd["module.v.head.weight"], sd["module.v.head.bias"] = torch.randn(1000, dim), torch.randn(1000)
    if pretraining:
        sd["module.p_input_fdim"], sd["module.p_input_tdim"] = torch.tensor(128), torch.tensor(encoder.input_shape[1])
        sd["module.mask_embed"] = torch.randn(1, 1, dim)
        for head in ("cpredlayer", "gpredlayer"):
            sd[f"module.{head}.0.weight"], sd[f"module.{head}.0.bias"] = torch.randn(dim, dim), torch.randn(dim)
            sd[f"module.{head}.2.weight"], sd[f"module.{head}.2.bias"] = torch.randn(256, dim), torch.randn(256)
    if classes:
        sd["module.mlp_head.0.weight"], sd["module.mlp_head.0.bias"] = torch.rand(dim) + 0.5, torch.randn(dim)
        sd["module.mlp_head.1.weight"], sd["module.mlp_head.1.bias"] = torch.randn(classes, dim), torch.randn(classes)
    return sd


def test_finetuned_ssamba_checkpoint_converts_and_matches_the_spec():
    source = randomize(make_encoder("ssamba", None, embed_dim=32, depth=4, target_length=128, fstride=10, tstride=10))
    sd = official_layout(source, 32, classes=5, pretraining=False)
    encoder, heads, report = convert_ssamba(sd, 128, 128, 10, 10)
    assert any("dropped v.head.weight" in line for line in report)
    head = torch.nn.Sequential(torch.nn.LayerNorm(32), torch.nn.Linear(32, 5))
    head.load_state_dict({k.removeprefix("mlp_head."): v for k, v in heads.items()})
    fbank = torch.randn(2, 128, 128)  # (B, T, F), as the official forward takes it
    with torch.no_grad():
        ours = head(encoder.eval()(fbank.transpose(1, 2).unsqueeze(1))[:, 1:].mean(1))
    torch.testing.assert_close(ours.double(), official_ssamba_reference(sd, fbank, 10, 10), rtol=1e-4, atol=1e-4)


def test_pretraining_checkpoint_recovers_grid_norm_and_heads(tmp_path):
    source = randomize(make_encoder("ssamba", None, embed_dim=32, depth=2, target_length=256, norm="rmsnorm"))
    sd = official_layout(source, 32)
    encoder, heads, report = convert_ssamba(sd)
    assert encoder.grid == (8, 16) and encoder.patch_stride == (16, 16)
    assert isinstance(encoder.norm_f, torch.nn.RMSNorm)
    assert {k.split(".")[0] for k in heads} == {"cpredlayer", "gpredlayer"}
    torch.testing.assert_close(encoder.mask_embed, sd["module.mask_embed"])
    path = tmp_path / "official.pth"
    torch.save(sd, path)
    assert convert_main(["ssamba", "--ckpt", str(path), "--out", str(tmp_path / "export")]) == 0
    rebuilt = from_pretrained(tmp_path / "export")
    x = torch.randn(1, 1, 128, 256)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), encoder.eval()(x))
    assert (tmp_path / "export" / "heads.safetensors").exists()


def test_converted_config_is_the_preset_of_its_width_with_the_official_normalisation(tmp_path):
    source = randomize(make_encoder("ssamba", "small", depth=2, target_length=128))
    torch.save(official_layout(source, 384), tmp_path / "official.pth")
    assert convert_main(["ssamba", "--ckpt", str(tmp_path / "official.pth"), "--out", str(tmp_path / "export")]) == 0
    saved = json.loads((tmp_path / "export" / "config.json").read_text())
    config = saved["encoder"]
    assert config["embed_dim"] == 384
    assert config == {**encoder_config("ssamba", "small", depth=2, target_length=128, mask_token=True).to_dict()}
    assert saved["data"] == {"mean": -4.2677393, "std": 4.5689974}  # the official pretraining's (AudioSet)


def test_ssl_continues_from_a_converted_pretraining_checkpoint(tmp_path, capsys):
    """The export keeps the official mask embedding (and the parameter count printed is what it holds);
    SSLModule(init_from=export) starts from the official encoder, mask embedding and heads."""
    from safetensors.torch import load_file

    from src.models.ssl_module import SSLModule

    source = randomize(make_encoder("ssamba", None, embed_dim=32, depth=2, target_length=256))
    sd = official_layout(source, 32)
    torch.save(sd, tmp_path / "official.pth")
    assert convert_main(["ssamba", "--ckpt", str(tmp_path / "official.pth"), "--out", str(tmp_path / "export")]) == 0
    held = load_file(str(tmp_path / "export" / "encoder.safetensors"))
    printed = int(capsys.readouterr().out.split("(")[-1].split(" encoder parameters")[0].replace(",", ""))
    assert printed == sum(v.numel() for v in held.values())
    torch.testing.assert_close(held["mask_embed"], sd["module.mask_embed"])
    module = SSLModule(encoder={}, init_from=str(tmp_path / "export"), mask_patches=20)
    torch.testing.assert_close(module.encoder.mask_embed.detach(), sd["module.mask_embed"])
    torch.testing.assert_close(module.gpredlayer[2].weight.detach(), sd["module.gpredlayer.2.weight"])
    torch.testing.assert_close(module.encoder.layers[1].mixer.A_b_log.detach(), sd["module.v.layers.1.mixer.A_b_log"])
    assert module.hparams.encoder["embed_dim"] == 32 and module.hparams.init_from is None
    assert torch.isfinite(module.losses(torch.randn(2, 1, 128, 256), 20, seed=0)["loss"])
    # a downstream encoder leaves the mask embedding out
    assert from_pretrained(tmp_path / "export").mask_embed is None


def test_ssast_checkpoint_converts_and_matches_the_spec():
    source = randomize(make_encoder("ssast", "tiny", depth=2, target_length=128, fstride=10, tstride=10))
    sd = official_layout(source, 192, classes=3, pretraining=False)
    sd["module.v.head_dist.weight"], sd["module.v.head_dist.bias"] = torch.randn(1000, 192), torch.randn(1000)
    encoder, heads, _ = convert_ssast(sd, 128, 128, 10, 10)
    head = torch.nn.Sequential(torch.nn.LayerNorm(192), torch.nn.Linear(192, 3))
    head.load_state_dict({k.removeprefix("mlp_head."): v for k, v in heads.items()})
    fbank = torch.randn(2, 128, 128)
    with torch.no_grad():
        ours = head(encoder.eval()(fbank.transpose(1, 2).unsqueeze(1))[:, 2:].mean(1))
    torch.testing.assert_close(ours.double(), official_ssast_reference(sd, fbank, 10, 10), rtol=1e-4, atol=1e-4)


def test_unknown_keys_and_wrong_grids_are_refused():
    source = make_encoder("ssamba", None, embed_dim=32, depth=2, target_length=128)
    sd = official_layout(source, 32)
    sd["module.some_new_layer.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unknown key 'some_new_layer.weight'"):
        convert_ssamba(sd)
    sd = official_layout(source, 32, classes=2, pretraining=False)
    with pytest.raises(ValueError, match="pass --target-length"):
        convert_ssamba(sd)
    with pytest.raises(ValueError, match="positional embedding has 64"):
        convert_ssamba(sd, 128, 128, 10, 10)


def test_pickled_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"module.v.cls_token": Evil()}, f)
    assert convert_main(["ssamba", "--ckpt", str(path), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
