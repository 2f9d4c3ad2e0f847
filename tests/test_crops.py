"""Batched device crops (models/crops.py) against the per-region host path.

Tolerances: classifier inputs (ImageNet-normalised) within 1e-4, i.e. a few 1e-6 of the
0-1 pixel range (float rounding of the matrix-product resize); six-type probabilities within
1e-4."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_sickle.models import crops as C

INPUT_ATOL = 1e-4
PROB_ATOL = 1e-4


@pytest.fixture(scope="module")
def smear():
    from napari_sickle.data.simulate import simulate_smear

    sm = simulate_smear(seed=5, shape=(240, 320), n_cells=14, cluster_fraction=0.6)
    boxes = sm.regions[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
    rng = np.random.default_rng(0)
    boxes = boxes + rng.uniform(-0.4, 0.4, boxes.shape)  # fractional coordinates
    extra = np.array(
        [
            [-5.0, -3.0, 30.2, 41.0],  # clipped at the image's corner
            [300.0, 200.0, 330.0, 250.0],  # past the right/bottom edge
            [10.0, 20.0, 230.0, 90.0],  # wider than the canvas minimum: shrunk, antialiased
            [50.0, 60.0, 51.0, 61.0],
        ]
    )  # one pixel
    return sm.image, np.concatenate([boxes, extra])


def _classifier(**kw):
    from napari_sickle.models.multilabel import new_classifier

    torch.manual_seed(0)
    return new_classifier(pretrained=False, **kw)


@pytest.mark.parametrize("side,size", [(112, 160), (160, 160), (230, 96), (61, 64), (300, 17)])
def test_resize_weights_match_interpolate(side, size):
    g = torch.Generator().manual_seed(side)
    canvas = torch.rand(1, 1, side, side, generator=g)
    ref = F.interpolate(canvas, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if side == size:
        ref = canvas
    r = C.resize_weights([side], [0], [side], side, size)[0]
    assert torch.allclose(r @ canvas[0, 0] @ r.T, ref[0, 0], atol=1e-5)


@pytest.mark.parametrize("size,min_side", [(192, 160), (64, 0), (48, 40)])
def test_padded_crops_equal_per_region(smear, size, min_side):
    image, boxes = smear
    clf = _classifier(split="none", crop="pad", input_size=size, min_side=min_side, tta="none")
    ref, o_ref = clf.region_crops_per_region(image, boxes)
    got, o_got = C.region_crops(clf, image, boxes, "batched")
    assert got.shape == ref.shape
    np.testing.assert_array_equal(o_got, o_ref)
    assert float((got - ref).abs().max()) < INPUT_ATOL


def test_stretch_crops_equal_per_region(smear):
    image, boxes = smear
    clf = _classifier(split="none", crop="stretch", input_size=64, tta="none")
    ref, _ = clf.region_crops_per_region(image, boxes)
    got, _ = C.region_crops(clf, image, boxes, "batched")
    assert float((got - ref).abs().max()) < INPUT_ATOL


def test_cell_crops_equal_per_region(smear):
    image, boxes = smear
    clf = _classifier(split="cells", tta="none")
    ref, o_ref = clf.region_crops_per_region(image, boxes)
    got, o_got = C.region_crops(clf, image, boxes, "batched")
    assert len(o_ref) > len(boxes)  # some regions were split into several cells
    np.testing.assert_array_equal(o_got, o_ref)
    assert float((got - ref).abs().max()) < INPUT_ATOL


@pytest.mark.parametrize(
    "kw",
    [
        dict(split="cells", tta="d4", pool="avgmax-s4"),
        dict(split="none", crop="pad", tta="hflip", input_size=96, min_side=80),
    ],
)
def test_probabilities_batched_equal_per_region(smear, kw):
    """The classifier's default (batched) path gives the per-region path's probabilities."""
    image, boxes = smear
    clf = _classifier(**kw)
    assert clf.crop_path == "batched"
    got = clf.predict_boxes(image, boxes)
    clf.crop_path = "per-region"
    ref = clf.predict_boxes(image, boxes)
    assert got.shape == ref.shape == (len(boxes), 6)
    np.testing.assert_allclose(got, ref, atol=PROB_ATOL, rtol=0)


def test_empty_and_unknown_path(smear):
    image, _ = smear
    clf = _classifier(split="none", crop="pad", input_size=32, min_side=0, tta="none")
    crops, owner = C.region_crops(clf, image, np.zeros((0, 4)))
    assert crops.shape == (0, 3, 32, 32) and len(owner) == 0
    with pytest.raises(ValueError):
        C.region_crops(clf, image, np.zeros((0, 4)), "fast")


def _cell_cuts_whole_region(image, boxes, params=None):
    """The cell cuts as made before the windowed, threaded split: every cell's mask dilated
    and blurred over its whole region, one region after another (the reference)."""
    from scipy import ndimage as ndi

    from napari_sickle.models.cells import DEFAULT_SPLIT, region_background, split_cells

    p = {**DEFAULT_SPLIT, **(params or {})}
    H, W = image.shape[:2]
    cuts, owner = [], []
    for i, box in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        x0, y0, x1, y1 = C._region_window(box, H, W, int(p["margin"]))
        region = image[y0:y1, x0:x1, :3]
        labels = split_cells(region, p)
        regf = region.astype(np.float32)
        bg = region_background(regf, labels > 0)
        if labels.max() <= 1:
            cuts.append(region)
            owner.append(i)
            continue
        for c in range(1, int(labels.max()) + 1):
            mask = ndi.binary_dilation(labels == c, iterations=int(p["dilate"]))
            alpha = ndi.gaussian_filter(mask.astype(np.float32), 1.0)
            ys, xs = np.nonzero(mask)
            a = alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1, None]
            cut = regf[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] * a + bg * (1 - a)
            cuts.append(np.clip(np.rint(cut), 0, 255).astype(np.uint8))
            owner.append(i)
    return cuts, np.asarray(owner)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_threaded_windowed_split_equals_whole_region_split(smear, workers):
    """Same cells per region and the same cut pixels (bit for bit) as the whole-region,
    one-region-at-a-time split, on any number of threads; probabilities then equal exactly."""
    image, boxes = smear
    ref_cuts, ref_owner = _cell_cuts_whole_region(image, boxes)
    cuts, fills, owner = C.cell_cuts(image, boxes, 72, workers=workers)
    np.testing.assert_array_equal(
        np.bincount(owner, minlength=len(boxes)), np.bincount(ref_owner, minlength=len(boxes))
    )
    assert len(cuts) == len(ref_cuts) > len(boxes)
    for a, b in zip(cuts, ref_cuts):
        np.testing.assert_array_equal(a, b)
    clf = _classifier(split="cells", tta="hflip", input_size=64, min_side=72)
    canv = C.canvases_from_cuts(cuts, fills, 64, 72)
    ref_canv = C.canvases_from_cuts(ref_cuts, fills, 64, 72)
    got = clf.region_probs(clf.features(canv), owner, len(boxes))
    ref = clf.region_probs(clf.features(ref_canv), ref_owner, len(boxes))
    np.testing.assert_array_equal(got, ref)
