import contextlib
import random

import pytest
import torch

from src.models.components.losses import info_nce, masked_mse, patchify
from src.models.components.masking import (
    cluster_mask,
    make_mask,
    mask_indices,
    official_mask,
    official_mask_ids,
    random_mask,
)
from src.models.ssl_module import SSLModule

SMALL_ENCODER = dict(backbone="ssamba", size=None, embed_dim=32, depth=2, target_length=160)


def reference_mpc(pred, target, softmax_dim=-1):
    """The official mpc loop: per sample torch.mm, LogSoftmax over dim -1, diagonal, argmax over dim 0."""
    B, M, _ = pred.shape
    nce, correct = 0.0, 0
    for i in range(B):
        total = torch.mm(target[i], pred[i].T)
        sm = torch.nn.Softmax(dim=softmax_dim)(total)
        correct += torch.sum(torch.eq(torch.argmax(sm, dim=0), torch.arange(0, M)))
        nce += torch.sum(torch.diag(torch.nn.LogSoftmax(dim=softmax_dim)(total)))
    return nce / (-1.0 * B * M), correct / (B * M)


@pytest.mark.parametrize("softmax_dim", [-1, 0])
def test_info_nce_matches_the_official_loop(softmax_dim):
    pred, target = torch.randn(3, 7, 16), torch.randn(3, 7, 16)
    nce, acc = info_nce(pred, target, softmax_dim)
    ref_nce, ref_acc = reference_mpc(pred, target, softmax_dim)
    torch.testing.assert_close(nce, ref_nce)
    torch.testing.assert_close(acc, ref_acc.float())


def test_info_nce_axes_differ_and_perfect_predictions_score():
    pred, target = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    assert not torch.isclose(info_nce(pred, target, -1)[0], info_nce(pred, target, 0)[0])
    target = torch.eye(6).repeat(2, 1, 1) * 10
    nce, acc = info_nce(target.clone(), target)
    assert acc == 1.0 and nce < 1e-3
    with pytest.raises(ValueError, match="nce_softmax_dim"):
        info_nce(pred, target[..., :8], 1)


def test_mse_is_the_mean_over_all_values():
    pred, target = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    torch.testing.assert_close(masked_mse(pred, target), ((pred - target) ** 2).mean())


def test_patchify_matches_token_order():
    spec = torch.arange(2 * 32 * 48.0).view(2, 1, 32, 48)
    patches = patchify(spec, (16, 16), (16, 16))  # (2, 2*3, 256)
    assert patches.shape == (2, 6, 256)
    # token 4 = frequency row 1, time column 1; values frequency-major inside the patch
    torch.testing.assert_close(patches[1, 4], spec[1, 0, 16:32, 16:32].reshape(-1))


@pytest.mark.parametrize("stride", [(16, 16), (10, 10)])
def test_patchify_equals_unfold_with_ragged_edges(stride):
    """The reshape path (patches that do not overlap) and unfold (overlapping ones) give unfold's result,
    also when the input is not a whole number of patches."""
    spec = torch.randn(3, 1, 40, 57)
    want = torch.nn.functional.unfold(spec, kernel_size=(16, 16), stride=stride).transpose(1, 2)
    torch.testing.assert_close(patchify(spec, (16, 16), stride), want, rtol=0, atol=0)


@pytest.mark.parametrize("num_mask", [250, 300, 400])
def test_official_mask_count_uniqueness_and_quirks(num_mask):
    rng = random.Random(0)
    for _ in range(20):
        ids = official_mask_ids(512, num_mask, rng)
        assert len(ids) == len(set(ids)) == num_mask
        assert 0 not in ids and max(ids) < 512


def test_official_mask_under_masks_the_lowest_frequency_row():
    rng = random.Random(1)
    mask = official_mask(300, 512, 400, rng).view(300, 8, 64).float()
    per_row = mask.mean(dim=(0, 2))
    assert per_row[0] < 0.6 and per_row[3:7].min() > 0.8  # spec: row 0 ~0.42, rows 3-6 ~0.88


@pytest.mark.parametrize("num_mask", [24, 250, 400])
def test_cluster_mask_exact_count_and_clusters(num_mask):
    torch.manual_seed(0)
    mask = cluster_mask(16, (8, 64), num_mask)
    assert mask.dtype == torch.bool and (mask.sum(1) == num_mask).all()
    idx = mask_indices(mask, num_mask)
    assert idx.shape == (16, num_mask) and (idx.diff(dim=1) > 0).all()  # ascending, no duplicates
    assert torch.equal(idx, mask.nonzero()[:, 1].view(16, num_mask))  # the masked positions, in order
    grid = mask.view(16, 8, 64)
    neighbours = torch.zeros_like(grid)
    neighbours[:, 1:] |= grid[:, :-1]
    neighbours[:, :-1] |= grid[:, 1:]
    neighbours[:, :, 1:] |= grid[:, :, :-1]
    neighbours[:, :, :-1] |= grid[:, :, 1:]
    clustered = (grid & neighbours).sum() / grid.sum()
    random_grid = random_mask(16, 512, num_mask).view(16, 8, 64)
    rn = torch.zeros_like(random_grid)
    rn[:, 1:] |= random_grid[:, :-1]
    rn[:, :-1] |= random_grid[:, 1:]
    rn[:, :, 1:] |= random_grid[:, :, :-1]
    rn[:, :, :-1] |= random_grid[:, :, 1:]
    assert clustered > 0.95 and clustered >= (random_grid & rn).sum() / random_grid.sum()


def _mask_statistics(strategy: str, grid, num_mask: int, batches: int = 16) -> dict:
    masks = torch.cat([make_mask(strategy, 64, grid, num_mask, seed=i) for i in range(batches)]).view(-1, *grid)
    m = masks.float()
    return {
        "count": masks.flatten(1).sum(1),
        "patch0": m[:, 0, 0].mean().item(),
        "rows": m.mean(dim=(0, 2)),  # masked share per frequency row
        "cols": m.mean(dim=(0, 1)),  # per time column
        "right": ((masks[:, :, :-1] & masks[:, :, 1:]).sum() / masks[:, :, :-1].sum()).item(),
        "down": ((masks[:, :-1] & masks[:, 1:]).sum() / masks[:, :-1].sum()).item(),
    }


# (frequency, time) patches: 1024 frames (pretraining), 400 frames (25 time patches), 128 frames
@pytest.mark.parametrize("grid,num_mask", [((8, 64), 250), ((8, 64), 400), ((8, 25), 100), ((8, 8), 24)])
def test_the_default_masking_draws_the_official_loops_masks_in_distribution(grid, num_mask):
    """The "official" masking (vectorised, the default) against "official_loop" (gen_maskid_patch line by line)
    over 1024 samples each: the same counts, never patch 0, the same shares per row and column and
    the same clustering; "cluster" masks patch 0 and the first time columns far less often (no
    wrap-around from the row before), which is how it differs. A cluster's rows lie the grid's time
    patches apart (the official p_t_dim), so clusters are as clustered down the frequency rows at
    400 frames as at 1024 (a fixed 64 gave 0.53 at 400 frames)."""
    vectorised, loop = _mask_statistics("official", grid, num_mask), _mask_statistics("official_loop", grid, num_mask)
    for stats in (vectorised, loop):
        assert (stats["count"] == num_mask).all() and stats["patch0"] == 0.0
        assert stats["down"] > 0.7
    torch.testing.assert_close(vectorised["rows"], loop["rows"], rtol=0, atol=0.04)
    torch.testing.assert_close(vectorised["cols"], loop["cols"], rtol=0, atol=0.06)
    assert abs(vectorised["right"] - loop["right"]) < 0.02 and abs(vectorised["down"] - loop["down"]) < 0.02
    if grid == (8, 64):
        cluster = _mask_statistics("cluster", grid, num_mask)
        assert cluster["patch0"] > 0.03 and cluster["cols"][0] < loop["cols"][0] - 0.2


def test_masking_errors_are_explained():
    with pytest.raises(ValueError, match="lower model.mask_patches"):
        make_mask("cluster", 2, (8, 8), 65)
    with pytest.raises(ValueError, match="unknown masking"):
        make_mask("blocks", 2, (8, 8), 10)


@pytest.mark.parametrize("masking", ["official", "official_loop", "cluster", "random"])
@pytest.mark.parametrize("two_passes", [True, False])
def test_ssl_step_trains_every_part(masking, two_passes):
    module = SSLModule(SMALL_ENCODER, mask_patches=20, val_mask_patches=20, masking=masking, two_passes=two_passes)
    spec = torch.randn(2, 1, 128, 160)
    out = module.losses(spec, 20)
    assert set(out) == {"loss", "nce", "mse", "acc"}
    torch.testing.assert_close(out["loss"], out["nce"] + 10 * out["mse"])
    out["loss"].backward()
    assert module.encoder.mask_embed.grad.abs().sum() > 0
    assert module.cpredlayer[2].weight.grad.abs().sum() > 0 and module.gpredlayer[2].weight.grad.abs().sum() > 0


def test_ssl_masked_outputs_read_the_right_patches():
    module = SSLModule(SMALL_ENCODER, mask_patches=10)
    spec = torch.randn(3, 1, 128, 160)
    mask, idx = module.masks(spec, 10, seed=0)
    hidden, target = module.masked_outputs(spec, mask, idx)
    assert hidden.shape == (3, 10, 32) and target.shape == (3, 10, 256)
    patches = patchify(spec, (16, 16), (16, 16))
    for b in range(3):  # every target row is the clip's own patch at a masked position
        torch.testing.assert_close(target[b], patches[b][mask[b]], rtol=0, atol=0)


def test_the_two_passes_of_a_step_stack_each_mixers_weights_once(monkeypatch):
    """weights_stacked_once around the step: each layer's weights stacked once for both encoder
    passes, the loss and every gradient as when each pass stacks its own; validation (no_grad)
    keeps its cache across steps."""
    from src.models.components.bimamba import BiMambaMixer

    torch.manual_seed(0)
    module = SSLModule(SMALL_ENCODER, mask_patches=20, two_passes=True)
    spec = torch.randn(2, 1, 128, 160)
    stacked = []
    real = BiMambaMixer._stack_weights
    monkeypatch.setattr(BiMambaMixer, "_stack_weights", lambda self, dtype: stacked.append(self) or real(self, dtype))

    def step():
        module.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # drop path's draws, the same both times
        loss = module.losses(spec, 20, seed=3)["loss"]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    loss, grads = step()
    mixers = [m for m in module.encoder.modules() if isinstance(m, BiMambaMixer)]
    assert len(mixers) == 2 and sorted(map(id, stacked)) == sorted(map(id, mixers))  # once each, not twice
    assert "_stacked_once" not in mixers[0].__dict__  # released after the step
    stacked.clear()
    with torch.no_grad():  # validation: the cache kept until a parameter changes, across steps
        module.losses(spec, 20, seed=4)
        module.losses(spec, 20, seed=5)
    assert sorted(map(id, stacked)) == sorted(map(id, mixers))
    monkeypatch.setattr(BiMambaMixer, "_stack_weights", real)
    monkeypatch.setattr("src.models.ssl_module.weights_stacked_once", lambda encoder: contextlib.nullcontext())
    apart_loss, apart_grads = step()  # each pass stacks its own, as before
    torch.testing.assert_close(loss, apart_loss, rtol=1e-6, atol=1e-7)
    assert grads.keys() == apart_grads.keys() and "encoder.layers.0.mixer.A_log" in grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, apart_grads[name], rtol=1e-5, atol=1e-7, msg=name)
