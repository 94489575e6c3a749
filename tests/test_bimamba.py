import math

import pytest
import torch
import torch.nn.functional as F

from src.models.components.bimamba import BiMambaMixer
from tests.helpers.reference import bimamba_reference

OFFICIAL_MIXER_KEYS = {
    "A_log",
    "D",
    "A_b_log",
    "D_b",
    "in_proj.weight",
    "conv1d.weight",
    "conv1d.bias",
    "x_proj.weight",
    "dt_proj.weight",
    "dt_proj.bias",
    "conv1d_b.weight",
    "conv1d_b.bias",
    "x_proj_b.weight",
    "dt_proj_b.weight",
    "dt_proj_b.bias",
    "out_proj.weight",
}


def test_parameter_names_and_shapes_are_the_official_ones():
    mixer = BiMambaMixer(192)
    shapes = {k: tuple(v.shape) for k, v in mixer.state_dict().items()}
    assert set(shapes) == OFFICIAL_MIXER_KEYS
    E, R = 384, 12
    assert shapes["in_proj.weight"] == (2 * E, 192)
    assert shapes["x_proj_b.weight"] == (R + 32, E)
    assert shapes["dt_proj.weight"] == (E, R)
    assert shapes["conv1d_b.weight"] == (E, 1, 4)
    assert shapes["A_b_log"] == (E, 16)
    assert shapes["out_proj.weight"] == (192, E)


def test_official_initialisation():
    mixer = BiMambaMixer(192, backward_dt_init="zero", n_layer=24)
    expected_A_log = torch.log(torch.arange(1, 17.0)).repeat(384, 1)
    torch.testing.assert_close(mixer.A_log.data, expected_A_log)
    torch.testing.assert_close(mixer.A_b_log.data, expected_A_log)
    assert torch.all(mixer.D == 1) and torch.all(mixer.D_b == 1)
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    assert torch.all(mixer.dt_proj_b.bias == 0)  # asymmetric: backward starts at softplus(0) = 0.693
    bound = 12**-0.5
    assert mixer.dt_proj.weight.abs().max() <= bound and mixer.dt_proj_b.weight.abs().max() <= bound
    # kaiming_uniform(a=sqrt 5) on fan_in 384, then / sqrt(24): std = 1/sqrt(3*384)/sqrt(24)
    expected_std = 1 / math.sqrt(3 * 384) / math.sqrt(24)
    assert abs(mixer.out_proj.weight.std().item() - expected_std) / expected_std < 0.05


def test_mamba_backward_dt_init_matches_forward_distribution():
    mixer = BiMambaMixer(192, backward_dt_init="mamba")
    dt_b = F.softplus(mixer.dt_proj_b.bias)
    assert dt_b.min() >= 1e-4 and dt_b.max() <= 0.1 + 1e-6
    with pytest.raises(ValueError, match="backward_dt_init"):
        BiMambaMixer(16, backward_dt_init="random")


@pytest.mark.parametrize("divide_out", [True, False])
def test_mixer_matches_spec_reference(divide_out):
    mixer = BiMambaMixer(16, d_state=4, divide_out=divide_out, backward_dt_init="mamba")
    hidden = torch.randn(2, 29, 16)
    torch.testing.assert_close(mixer(hidden).double(), bimamba_reference(mixer, hidden), rtol=1e-4, atol=1e-5)


def test_backward_direction_reads_the_sequence_reversed():
    # with the forward branch silenced, the output at t may depend only on tokens >= t
    mixer = BiMambaMixer(8, d_state=4)
    with torch.no_grad():
        mixer.x_proj.weight.zero_()
        mixer.conv1d.weight.zero_()
        mixer.conv1d.bias.fill_(-50.0)  # silu(-50) ~ 0: the forward branch outputs ~0 (D * 0)
    hidden = torch.randn(1, 10, 8, requires_grad=True)
    out = mixer(hidden)
    (grad,) = torch.autograd.grad(out[0, 4].sum(), hidden)
    assert grad[0, :4].abs().max() < 1e-6 * grad[0, 4:].abs().max() + 1e-12
    assert grad[0, 5:].abs().max() > 0


def test_inference_weights_are_kept_until_a_parameter_changes():
    """Under no_grad the stacked kernel weights are built once; an in-place update (an optimizer step)
    or a loaded state dict builds them again, so outputs always follow the parameters."""
    mixer = BiMambaMixer(16, d_state=4).eval()
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        first = mixer.kernel_weights(torch.float32)
        assert all(a is b for a, b in zip(first, mixer.kernel_weights(torch.float32)))
        before = mixer(x)
        mixer.D.add_(1.0)
        torch.testing.assert_close(mixer.kernel_weights(torch.float32)[7], torch.stack([mixer.D, mixer.D_b]) * 0.5)
        changed = mixer(x)
        assert not torch.allclose(before, changed)
        other = BiMambaMixer(16, d_state=4)
        mixer.load_state_dict(other.state_dict())
        torch.testing.assert_close(mixer(x), other.eval()(x), rtol=0, atol=0)
    # with autograd on, the weights are built fresh and carry gradients to the parameters
    mixer(x).sum().backward()
    assert mixer.x_proj.weight.grad is not None and mixer.A_b_log.grad is not None


def test_validation_after_training_sees_updates_that_bump_no_version():
    """CUDA's fused Adam writes the parameters in place without bumping their versions (as `.data`
    writes do here): the train() / eval() switch around an epoch drops the stacked weights, so
    validation runs on the weights the epoch left, not on those of the validation before."""
    mixer = BiMambaMixer(16, d_state=4).eval()
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        mixer(x)  # the sanity-check validation stacks the weights
    mixer.train()
    for p in mixer.parameters():
        p.data.mul_(1.5)  # an optimizer step that leaves p._version as it was
    mixer.eval()
    fresh = BiMambaMixer(16, d_state=4)
    fresh.load_state_dict(mixer.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), fresh.eval()(x), rtol=0, atol=0)
