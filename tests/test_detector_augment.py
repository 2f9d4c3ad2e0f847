"""Detector training options: scale jitter of the crops, min_visible, proposal/RoI samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def test_jitter_range():
    from napari_sickle.training.detector import _jitter_range

    assert _jitter_range(None) is None and _jitter_range(0) is None and _jitter_range(False) is None
    assert _jitter_range(0.25) == pytest.approx((0.8, 1.25))
    assert _jitter_range([0.7, 1.4]) == (0.7, 1.4)
    with pytest.raises(ValueError):
        _jitter_range([1.2, 0.8])


def test_scale_jitter_keeps_boxes_on_their_cells():
    from napari_sickle.training.detector import _random_crop

    img = torch.full((3, 200, 300), 0.2)
    img[:, 60:100, 50:90] = 0.9
    boxes, labels = torch.tensor([[50.0, 60.0, 90.0, 100.0]]), torch.tensor([1])
    widths, n = set(), 0
    for seed in range(40):
        crop, t = _random_crop(
            img, boxes, labels, 128, np.random.default_rng(seed), min_visible=0.99, scale_jitter=(0.7, 1.4)
        )
        assert abs(crop.shape[-1] - 128) <= 1 and abs(crop.shape[-2] - 128) <= 1  # about size pixels a side
        if len(t["boxes"]):
            n += 1
            g = crop[0].numpy()
            ys, xs = np.nonzero(g > (g.max() + g.min()) / 2)
            np.testing.assert_allclose(t["boxes"].numpy(), [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], atol=1.0)
            widths.add(round(float(t["boxes"][0, 2] - t["boxes"][0, 0])))
    assert n >= 3 and len(widths) >= 3  # the cell is seen at several sizes


def test_default_crop_draws_the_same_random_numbers():
    """scale_jitter=None leaves the random stream (and so the default recipe) as it was."""
    from napari_sickle.training.detector import _random_crop

    img = torch.rand(3, 120, 160)
    boxes, labels = torch.tensor([[10.0, 10.0, 50.0, 40.0]]), torch.tensor([1])
    r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
    a, _ = _random_crop(img, boxes, labels, 64, r1)
    b, _ = _random_crop(img, boxes, labels, 64, r2, scale_jitter=None, min_visible=0.7)
    assert torch.equal(a, b) and r1.random() == r2.random()


def test_min_visible_keeps_partly_cut_cells():
    from napari_sickle.training.detector import _random_crop

    img = torch.zeros(3, 64, 128)
    boxes, labels = torch.tensor([[50.0, 10.0, 78.0, 40.0]]), torch.tensor([1])  # cut at x=64 by half crops
    kept = {0.7: 0, 0.3: 0}
    for mv in kept:
        for seed in range(30):
            _, t = _random_crop(img, boxes, labels, 64, np.random.default_rng(seed), min_visible=mv)
            kept[mv] += len(t["boxes"])
    assert kept[0.3] > kept[0.7]


def test_sampler_options_are_applied_and_recorded(tmp_path):
    from napari_sickle.models.checkpoint import load_checkpoint
    from napari_sickle.training.detector import train_detector

    r = train_detector(
        "simulated",
        tmp_path,
        epochs=1,
        iters_per_epoch=1,
        batch_size=1,
        crop_size=96,
        n_smears=2,
        smear_shape=(128, 160),
        scale_jitter=0.2,
        min_visible=0.5,
        rpn_batch_size_per_image=128,
        box_positive_fraction=0.5,
    )
    rec = load_checkpoint(r["checkpoint"], kind="detector")["recipe"]
    assert rec["samplers"] == {
        "rpn_batch_size_per_image": 128,
        "rpn_positive_fraction": 0.5,
        "box_batch_size_per_image": 128,
        "box_positive_fraction": 0.5,
    }
    assert rec["scale_jitter"] == pytest.approx([1 / 1.2, 1.2]) and rec["min_visible"] == 0.5
    assert "scale jitter" in rec["augment"]
