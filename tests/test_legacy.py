"""Exports and checkpoints written before the EncoderConfig redesign (by commit eb12644, see
tests/data/legacy_eb12644/make.py) load with today's code and give the outputs they gave then."""

from pathlib import Path

import pytest
import torch

from src.export import export
from src.models.finetune_module import FinetuneModule
from src.models.pretrained import from_pretrained, read_pretrained

OLD = Path(__file__).parent / "data" / "legacy_eb12644"
# The stored outputs were computed on another machine: fp32 matmuls sum in an order that depends on
# the CPU's BLAS kernels and the thread count, so a few ulps per layer differ (1.5e-7 seen). A wrong
# weight, config field or quirk moves the outputs by 1e-2 or more, far outside this.
ACROSS_MACHINES = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def outputs():
    return torch.load(OLD / "outputs.pt", weights_only=True)


@pytest.mark.parametrize("name,key", [("ssamba_export", "ssamba"), ("ssast_export", "ssast"), ("ssl.ckpt", "ssamba")])
def test_old_exports_and_checkpoints_rebuild_the_same_encoder(outputs, name, key):
    encoder = from_pretrained(OLD / name)
    assert encoder.config.target_length == 128  # the old input_tdim
    with torch.no_grad():
        torch.testing.assert_close(encoder(outputs["input"]), outputs[key], **ACROSS_MACHINES)


def test_an_old_fine_tuning_checkpoint_loads_whole_and_as_a_pretrained_encoder(outputs):
    model = FinetuneModule.load_from_checkpoint(OLD / "ks2.ckpt", weights_only=True).eval()
    assert model.encoder.patch_stride == (10, 10) and model.hparams.num_classes == 5
    with torch.no_grad():
        torch.testing.assert_close(model(outputs["input"]), outputs["ks2_logits"], **ACROSS_MACHINES)
    config, state, data = read_pretrained(OLD / "ks2.ckpt")
    assert (config.embed_dim, config.fstride, data) == (32, 10, None)  # old checkpoints record no normalisation


def test_an_old_checkpoint_exports_with_the_normalisation_given(outputs, tmp_path):
    with pytest.raises(ValueError, match="pass mean=... std="):
        export(str(OLD / "ssl.ckpt"), str(tmp_path / "e"))
    out = export(str(OLD / "ssl.ckpt"), str(tmp_path / "e"), mean=-3.9, std=3.5)
    encoder = from_pretrained(out)
    with torch.no_grad():
        torch.testing.assert_close(encoder(outputs["input"]), outputs["ssamba"], **ACROSS_MACHINES)
