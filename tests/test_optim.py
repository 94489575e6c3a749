"""The official warm-up, on float learning rates and on tensor ones (a capturable optimizer's, which
a CUDA graph reads in place)."""

import pytest
import torch

from src.models.optim import apply_warmup, warmup_factor


def test_the_official_warmup_is_a_staircase_of_50_steps_from_zero():
    assert [warmup_factor(s, 1000) for s in (0, 49, 50, 999, 1000, 5000)] == [0.0, 0.0, 0.05, 0.95, 1.0, 1.0]
    assert warmup_factor(0, 1000, staircase=False) == pytest.approx(1 / 1000)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_warmup_scales_every_group_from_its_base_rate(as_tensor):
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    rates = [torch.tensor(1e-3), torch.tensor(3e-3)] if as_tensor else [1e-3, 3e-3]
    optimizer = torch.optim.AdamW([{"params": [p], "lr": lr} for p, lr in zip(params, rates)])
    for step in (100, 500, 1000):
        apply_warmup(optimizer, step, 1000)
        for group, base in zip(optimizer.param_groups, (1e-3, 3e-3)):
            assert float(group["lr"]) == pytest.approx(base * warmup_factor(step, 1000))
            assert group["base_lr"] == pytest.approx(base) and isinstance(group["base_lr"], float)
    if as_tensor:  # written in place: a captured graph reads the same tensor
        assert all(group["lr"] is lr for group, lr in zip(optimizer.param_groups, rates))
