import pytest
import torch

from src.models.components.patching import patch_grid, resize_pos_embed


def grid_embedding(f, t, dim=1, prefix=1):
    """pos-embed whose patch entry (i, j) holds 100 * i + j, prefix entries hold -1."""
    values = torch.tensor([[100.0 * i + j for j in range(t)] for i in range(f)]).reshape(1, f * t, 1)
    return torch.cat([torch.full((1, prefix, 1), -1.0), values], dim=1).repeat(1, 1, dim)


def as_grid(pos, f, t, prefix=1):
    return pos[0, prefix:, 0].reshape(f, t)


def test_patch_grid_counts():
    assert patch_grid(128, 1024, 16, 16, 16, 16) == (8, 64)
    assert patch_grid(128, 1024, 16, 16, 10, 10) == (12, 101)
    assert patch_grid(128, 128, 16, 16, 10, 10) == (12, 12)
    assert patch_grid(128, 1000, 16, 16, 10, 10) == (12, 99)
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        patch_grid(128, 8, 16, 16, 16, 16)


def test_time_centre_crop_keeps_the_middle_columns():
    pos = grid_embedding(8, 64)
    out = resize_pos_embed(pos, 1, (8, 64), (8, 12))
    # official: int(64/2) - int(12/2) = 26 -> columns 26..37
    torch.testing.assert_close(as_grid(out, 8, 12), as_grid(pos, 8, 64)[:, 26:38])
    assert out[0, 0, 0] == -1  # prefix entry kept


def test_frequency_interpolation_is_bilinear_without_corner_alignment():
    pos = grid_embedding(2, 1)  # rows hold 0 and 100
    out = resize_pos_embed(pos, 1, (2, 1), (4, 1), rule="fixed")
    # align_corners=False samples rows at -0.25, 0.25, 0.75, 1.25 (clamped): 0, 25, 75, 100
    torch.testing.assert_close(as_grid(out, 4, 1)[:, 0], torch.tensor([0.0, 25.0, 75.0, 100.0]))


def test_official_rule_hard_codes_eight_rows_before_frequency_interpolation():
    # grid (4, 2) -> (4, 3): time is interpolated to (8, 3) first, then frequency back to (4, 3)
    pos = grid_embedding(4, 2)
    official = resize_pos_embed(pos, 1, (4, 2), (4, 3), rule="official")
    fixed = resize_pos_embed(pos, 1, (4, 2), (4, 3), rule="fixed")
    src = as_grid(pos, 4, 2)[None, None]
    two_step = torch.nn.functional.interpolate(src, size=(8, 3), mode="bilinear")
    two_step = torch.nn.functional.interpolate(two_step, size=(4, 3), mode="bilinear")
    torch.testing.assert_close(as_grid(official, 4, 3), two_step[0, 0])
    direct = torch.nn.functional.interpolate(src, size=(4, 3), mode="bilinear")
    torch.testing.assert_close(as_grid(fixed, 4, 3), direct[0, 0])
    assert not torch.allclose(as_grid(official, 4, 3), as_grid(fixed, 4, 3))


def test_official_frequency_crop_bug_and_its_fix():
    pos = grid_embedding(8, 64)
    # (8, 64) -> (4, 2): official crops rows [2 : 2 + t_dim=2] -> 2 rows, cannot fit 4: clear error
    with pytest.raises(ValueError, match="set pos_resize=fixed"):
        resize_pos_embed(pos, 1, (8, 64), (4, 2), rule="official")
    fixed = resize_pos_embed(pos, 1, (8, 64), (4, 2), rule="fixed")
    torch.testing.assert_close(as_grid(fixed, 4, 2), as_grid(pos, 8, 64)[2:6, 31:33])
    # the bug is invisible when t_dim == f_dim: both slice the same rows
    official = resize_pos_embed(pos, 1, (8, 64), (4, 4), rule="official")
    torch.testing.assert_close(official, resize_pos_embed(pos, 1, (8, 64), (4, 4), rule="fixed"))


def test_ssamba_finetune_grids_from_the_spec():
    pos = torch.randn(1, 513, 3)
    # ESC-50: T=512, stride 10 -> (12, 50): time crop [7:57], then frequency 8 -> 12
    out = resize_pos_embed(pos, 1, (8, 64), (12, 50))
    assert out.shape == (1, 1 + 600, 3)
    src = pos[:, 1:].transpose(1, 2).reshape(1, 3, 8, 64)[:, :, :, 7:57]
    manual = torch.nn.functional.interpolate(src, size=(12, 50), mode="bilinear")
    torch.testing.assert_close(out[:, 1:], manual.reshape(1, 3, 600).transpose(1, 2))
    # AudioSet: T=1024 -> (12, 101), 1213 tokens with cls
    assert resize_pos_embed(pos, 1, (8, 64), (12, 101)).shape[1] == 1213
