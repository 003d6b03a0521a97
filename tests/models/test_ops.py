"""RoI Align by grid_sample and the FPN level rule, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from models.ops import assign_fpn_levels, multilevel_roi_align, roi_align


def _ramp(height: int, width: int) -> torch.Tensor:
    """(1, 2, H, W): channel 0 holds the pixel's x, channel 1 its y."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32),
        torch.arange(width, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs, ys])[None]


def test_constant_map_gives_constant_output() -> None:
    features = torch.full((2, 3, 10, 12), 7.5)
    boxes = torch.tensor([[4.0, 4.0, 30.0, 20.0], [0.0, 0.0, 48.0, 40.0]])
    out = roi_align(features, boxes, torch.tensor([1, 0]), 4, 0.25)
    assert out.shape == (2, 3, 4, 4)
    torch.testing.assert_close(out, torch.full_like(out, 7.5))


def test_linear_ramp_reads_bin_centres() -> None:
    # Box (8, 4) - (24, 20) at scale 0.5 spans feature x in [3.5, 11.5], y in [1.5, 9.5] (aligned:
    # -0.5); 4 bins of 2 feature pixels, so bin centres at start + 1, 3, 5, 7.
    features = _ramp(12, 16)
    out = roi_align(features, torch.tensor([[8.0, 4.0, 24.0, 20.0]]), torch.tensor([0]), 4, 0.5)
    centres_x = torch.tensor([4.5, 6.5, 8.5, 10.5])
    centres_y = torch.tensor([2.5, 4.5, 6.5, 8.5])
    torch.testing.assert_close(out[0, 0], centres_x[None].expand(4, 4))
    torch.testing.assert_close(out[0, 1], centres_y[:, None].expand(4, 4))


def test_points_far_outside_read_zero_and_near_border_reads_border() -> None:
    features = torch.ones(1, 1, 4, 4)
    far = torch.tensor([[40.0, 40.0, 50.0, 50.0]])  # x, y > W: every sample is invalid
    assert roi_align(features, far, torch.tensor([0]), 2, 1.0).abs().max() == 0
    near = torch.tensor([[-0.4, -0.4, 0.4, 0.4]])  # within one pixel of the border: reads it
    torch.testing.assert_close(
        roi_align(features, near, torch.tensor([0]), 2, 1.0), torch.ones(1, 1, 2, 2)
    )


def test_one_box_per_map_path_matches_grouped_path() -> None:
    torch.manual_seed(0)
    features = torch.randn(3, 2, 9, 11)
    boxes = torch.tensor([[1.0, 2.0, 30.0, 20.0], [5.0, 5.0, 9.0, 33.0], [0.0, 0.0, 44.0, 36.0]])
    one_each = roi_align(features, boxes, torch.arange(3), 3, 0.25)
    grouped = torch.cat(
        [
            roi_align(features[i : i + 1], boxes[i : i + 1], torch.tensor([0]), 3, 0.25)
            for i in range(3)
        ]
    )
    torch.testing.assert_close(one_each, grouped)


def test_width_one_map_and_empty_boxes() -> None:
    features = torch.arange(5.0).view(1, 1, 5, 1)
    out = roi_align(features, torch.tensor([[0.0, 0.0, 1.0, 5.0]]), torch.tensor([0]), 5, 1.0, 1)
    torch.testing.assert_close(out[0, 0, :, 0], torch.arange(5.0))
    empty = roi_align(torch.randn(2, 4, 8, 8), torch.zeros(0, 4), torch.zeros(0), 7, 1.0)
    assert empty.shape == (0, 4, 7, 7)


def test_roi_align_rejects_adaptive_sampling() -> None:
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(torch.ones(1, 1, 4, 4), torch.ones(1, 4), torch.zeros(1), 2, 1.0, 0)


def test_roi_align_gradient_reaches_features() -> None:
    features = torch.randn(1, 2, 8, 8, requires_grad=True)
    roi_align(
        features, torch.tensor([[2.0, 2.0, 20.0, 20.0]]), torch.tensor([0]), 2, 0.25
    ).sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_assign_fpn_levels_canonical_rule() -> None:
    sides = torch.tensor([10.0, 111.0, 112.0, 224.0, 447.0, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros(7), torch.zeros(7), sides, sides], dim=1)
    # floor(4 + log2(side / 224)) clamped to [3, 5].
    assert assign_fpn_levels(boxes).tolist() == [3, 3, 3, 4, 4, 5, 5]
    expected = [min(5, max(3, math.floor(4 + math.log2(s / 224 + 1e-8)))) for s in sides.tolist()]
    assert assign_fpn_levels(boxes).tolist() == expected


def test_multilevel_roi_align_reads_the_assigned_level() -> None:
    strides = (8, 16, 32, 64, 128)
    # Each level holds its own level number, so the output says which level was read.
    features = [torch.full((2, 1, 1024 // s, 1024 // s), math.log2(s)) for s in strides]
    boxes = torch.tensor(
        [
            [0.0, 0.0, 50.0, 50.0],  # 50 px: level 3
            [0.0, 0.0, 224.0, 224.0],  # 224 px: level 4
            [0.0, 0.0, 256.0, 256.0],  # 256 px: level 4
            [0.0, 0.0, 1000.0, 1000.0],  # 1000 px: level 5 (6 clamped)
        ]
    )
    out = multilevel_roi_align(features, boxes, torch.tensor([0, 1, 1, 0]), 4, strides)
    assert out.shape == (4, 1, 4, 4)
    assert out[:, 0, 0, 0].tolist() == [3.0, 4.0, 4.0, 5.0]


def test_multilevel_roi_align_needs_every_level() -> None:
    with pytest.raises(ValueError, match="levels"):
        multilevel_roi_align([torch.ones(1, 1, 4, 4)], torch.ones(1, 4), torch.zeros(1), 2, (8,))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit inside torchvision's path
def test_roi_align_matches_torchvision() -> None:
    # torchvision's pure-Python roi_align compiles on its first CPU call (tens of seconds).
    import alp_curation.torchvision_fix  # noqa: F401  (makes torchvision importable)

    from torchvision.ops import roi_align as tv_roi_align

    torch.manual_seed(0)
    features = torch.randn(2, 3, 13, 17)
    boxes = torch.tensor(
        [
            [0.0, 0.0, 60.0, 44.0],
            [10.0, 5.0, 30.0, 50.0],
            [3.3, 12.1, 33.0, 13.0],
            [20.0, 20.0, 20.5, 40.0],
            [1.0, 1.0, 67.0, 51.0],
        ]
    )
    batch_index = torch.tensor([0, 1, 1, 0, 1])
    for output_size, ratio in ((5, 2), (3, 1), (4, 3)):
        ours = roi_align(features, boxes, batch_index, output_size, 0.25, ratio)
        rois = torch.cat([batch_index[:, None].float(), boxes], dim=1)
        theirs = tv_roi_align(features, rois, output_size, 0.25, ratio, aligned=True)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
