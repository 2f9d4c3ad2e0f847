"""The batched torch cell split (models/cells_torch.py) against the host split (models/cells.py).

The agreement floors sit a little under what was measured on these inputs and on the regions
of 1920x1080 simulated smears (docs/performance.md, "Device cell split"): composed patches of
2-4 sickle-rbc cells (6 crops per class folder) and small simulated smears.
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_sickle.models import cells_torch as ct
from napari_sickle.models.cells import split_cells

from conftest import disc_image

SAME_COUNT_FLOOR = 0.95
MEAN_IOU_FLOOR = 0.97
PATCHES = 40


def _matched_iou(ref, lab):
    """For each cell of ``ref``, the IoU of the best-overlapping cell of ``lab`` (0 if none)."""
    out = []
    for c in range(1, int(ref.max()) + 1):
        m = ref == c
        ious = [(m & (lab == d)).sum() / (m | (lab == d)).sum() for d in range(1, int(lab.max()) + 1)]
        out.append(max(ious, default=0.0))
    return out


@pytest.fixture(scope="module")
def crops(sickle_data, tmp_path_factory):
    """Six crops of each sickle-rbc class folder (read through SICKLE_DATA)."""
    from napari_sickle.data.compose import load_crops

    src = sickle_data / "sickle-rbc"
    if not src.is_dir():
        pytest.skip(f"{src} is missing")
    root = tmp_path_factory.mktemp("sickle-rbc-subset")
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        (root / folder.name).mkdir()
        for f in sorted(folder.iterdir())[:6]:
            shutil.copy(f, root / folder.name / f.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_crops(root)


# ------------------------------------------------------------------ primitives vs SciPy
def test_label_matches_scipy_and_names_components_by_their_first_pixel():
    rng = np.random.default_rng(0)
    for trial in range(6):
        m = rng.random((3, 31, 47)) < (0.45 if trial % 2 else 0.6)
        if trial % 3 == 0:
            m = ndi.binary_opening(m)
        lab = ct.label(torch.from_numpy(m)).numpy()
        for b in range(3):
            ref, k = ndi.label(m[b])
            expected = np.zeros(ref.shape, np.int64)
            for c in range(1, k + 1):
                ys, xs = np.nonzero(ref == c)
                expected[ref == c] = 1 + b * 31 * 47 + ys[0] * 47 + xs[0]
            np.testing.assert_array_equal(lab[b], expected)
    # a long thin spiral-like path is one component
    comb = np.zeros((1, 41, 41), bool)
    comb[0, ::4] = True
    comb[0, :, 0] = True
    assert len(np.unique(ct.label(torch.from_numpy(comb)).numpy())) == 2


def test_distance_and_morphology_match_scipy_per_region_size():
    from skimage.morphology import disk

    rng = np.random.default_rng(1)
    hs, ws = [40, 33, 21], [57, 50, 30]
    valid = np.zeros((3, 40, 57), bool)
    for b in range(3):
        valid[b, : hs[b], : ws[b]] = True
    m = ndi.binary_opening(rng.random((3, 40, 57)) < 0.75, iterations=2) & valid
    d = ct.distance(torch.from_numpy(m), torch.from_numpy(valid)).numpy()
    g = ct.gaussian(torch.from_numpy(m.astype(np.float32)), 1.5, hs, ws).numpy()
    for b in range(3):
        region = m[b, : hs[b], : ws[b]]
        np.testing.assert_allclose(d[b, : hs[b], : ws[b]], ndi.distance_transform_edt(region), atol=1e-5)
        np.testing.assert_allclose(
            g[b, : hs[b], : ws[b]], ndi.gaussian_filter(region.astype(np.float32), 1.5), atol=1e-5
        )
    for r in (2, 3):
        dil = ct._dilate(torch.from_numpy(m.astype(np.float32)), r).numpy() > 0.5
        ref = np.stack([ndi.binary_dilation(np.pad(x, r), disk(r))[r:-r, r:-r] for x in m])
        np.testing.assert_array_equal(dil, ref)


# ------------------------------------------------------------------ the split itself
def test_touching_discs_single_cells_blank_regions_and_edge_pieces():
    two = disc_image([(45, 50), (45, 99)], [25, 25])
    one = disc_image([(45, 75)], [28])
    ring = disc_image([(45, 75)], [28], outline=True)
    cut = disc_image([(45, 60), (45, 140)], [26, 22])[:, :125]  # the second disc cut by the edge
    rng = np.random.default_rng(3)
    blanks = [
        np.clip(170 + rng.normal(0, 2, (h, w, 3)), 0, 255).astype(np.uint8) for h, w in ((60, 60), (5, 40), (90, 7))
    ]
    regions = [two, one, ring, cut, *blanks]
    labs = ct.split_regions(regions)
    assert [lab.shape for lab in labs] == [r.shape[:2] for r in regions]
    assert [int(lab.max()) for lab in labs] == [2, 1, 1, 1, 0, 0, 0]
    assert labs[0][45, 40] != labs[0][45, 110] and labs[2][45, 75] == 1 and labs[3][45, 60] == 1
    for r, lab in zip(regions[:4], labs):  # these simple shapes: the host split's labels exactly
        np.testing.assert_array_equal(lab, split_cells(r))
    for lab in labs[4:]:
        assert lab.dtype == np.int32 and not lab.any()


def test_batched_equals_one_at_a_time_and_windows_equal_regions(monkeypatch):
    rng = np.random.default_rng(5)
    regions = [
        disc_image([(40, 45), (42, 92)], [24, 26], shape=(85, 140), seed=1),
        disc_image([(30, 30)], [22], shape=(64, 66), seed=2),
        disc_image([(45, 40), (40, 85), (80, 60)], [22, 24, 21], shape=(110, 120), seed=3),
        np.clip(180 + rng.normal(0, 2, (50, 70, 3)), 0, 255).astype(np.uint8),
    ]
    alone = [ct.split_regions([r])[0] for r in regions]
    hs, ws = [r.shape[0] for r in regions], [r.shape[1] for r in regions]
    assert len(ct.size_groups(hs, ws)) > 1 and len(ct.size_groups(hs, ws, 1 << 30, ratio=None)) == 1
    monkeypatch.setattr(ct, "_groups", lambda hs, ws, dev, budget: ct.size_groups(hs, ws, 1 << 30, ratio=None))
    together = ct.split_regions(regions)  # all in one padded batch, as on CUDA
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a, b)
    assert [int(x.max()) for x in together] == [int(split_cells(r).max()) for r in regions] == [2, 1, 2, 0]
    # the same regions as windows of one image
    img = np.full((140, 520, 3), 185, np.uint8)
    windows, x = [], 0
    for r in regions:
        h, w = r.shape[:2]
        img[:h, x : x + w] = r
        windows.append((x, 0, x + w, h))
        x += w + 5
    for a, b in zip(ct.split_windows(img, windows), together):
        np.testing.assert_array_equal(a, b)


def test_a_cell_on_the_region_edge_is_kept_and_a_small_cut_piece_dropped():
    """The main cell touching the region's edge (tight boxes) stays; a small piece cut by the
    opposite edge and apart from it goes (``drop_foreign_pieces``), in one batch and alone."""
    edge = disc_image([(45, 22)], [26], shape=(90, 110))  # cut by the left edge
    both = disc_image([(45, 22), (45, 130)], [26, 24], shape=(90, 120), seed=4)  # and a piece on the right
    labs = ct.split_regions([edge, both, disc_image([(45, 75)], [28])])
    for r, lab in zip((edge, both), labs):
        assert int(lab.max()) == 1
        np.testing.assert_array_equal(lab, split_cells(r))
    assert not labs[1][:, 110:].any()
    assert int(ct.split_regions([edge])[0].max()) == 1


def test_agreement_with_the_host_split_on_simulated_smear_regions():
    """The connected regions of small simulated smears (cells cut by the window's edge, tight
    boxes): the same number of cells in every region, a mean matched IoU of 0.999 or more."""
    from napari_sickle.data.simulate import simulate_smear
    from napari_sickle.models.crops import _region_window

    host, dev = [], []
    for seed in (11, 12):
        sm = simulate_smear(seed=seed, shape=(480, 640))
        boxes = sm.regions[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
        windows = [_region_window(b, 480, 640, 4) for b in boxes]
        host += [split_cells(sm.image[y0:y1, x0:x1]) for x0, y0, x1, y1 in windows]
        dev += ct.split_windows(sm.image, windows)
    same = np.mean([a.max() == b.max() for a, b in zip(host, dev)])
    ious = [v for a, b in zip(host, dev) for v in _matched_iou(a, b)]
    assert len(host) >= 30 and sum(int(a.max()) > 1 for a in host) >= 5
    assert same >= SAME_COUNT_FLOOR, same
    assert np.mean(ious) >= MEAN_IOU_FLOOR, np.mean(ious)


def test_agreement_with_the_host_split_on_composed_patches(crops):
    from napari_sickle.data.compose import compose_patches

    items = compose_patches(crops, PATCHES, seed=0, min_cells=2, max_cells=4)
    imgs = [it[0] for it in items]
    host = [split_cells(im) for im in imgs]
    dev = ct.split_regions(imgs)
    same = np.mean([a.max() == b.max() for a, b in zip(host, dev)])
    ious = [v for a, b in zip(host, dev) for v in _matched_iou(a, b)]
    assert same >= SAME_COUNT_FLOOR, same
    assert np.mean(ious) >= MEAN_IOU_FLOOR, np.mean(ious)
    assert sum(int(a.max()) > 1 for a in host) >= PATCHES // 2  # the check sees real splits


def test_single_cell_crops_stay_one_cell(crops):
    from napari_sickle.data.compose import compose_patches

    imgs = [it[0] for it in compose_patches(crops, 30, seed=1, min_cells=1, max_cells=1)]
    counts = [int(lab.max()) for lab in ct.split_regions(imgs)]
    assert np.mean(np.asarray(counts) == 1) >= 0.9, counts
    assert counts == [int(split_cells(im).max()) for im in imgs]


# ------------------------------------------------------------------ the crop-path option
def test_backend_choice_and_the_crop_path_hook():
    from napari_sickle.models.crops import cell_cuts

    assert ct.resolve_backend("auto", "cpu") == "skimage"
    assert ct.resolve_backend("auto", "cuda") == "torch"
    assert ct.resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="unknown cell split backend"):
        ct.resolve_backend("gpu")
    img = np.full((100, 400, 3), 190, np.uint8)
    img[:90, :150] = disc_image([(45, 50), (45, 99)], [25, 25])
    img[:90, 250:400] = disc_image([(45, 75)], [28])
    boxes = [[4, 4, 146, 86], [254, 4, 396, 86]]
    host = cell_cuts(img, boxes, 80, backend="skimage")
    dev = cell_cuts(img, boxes, 80, backend="torch", device="cpu")
    assert dev[2].tolist() == host[2].tolist() == [0, 0, 1]
    for a, b in zip(dev[0], host[0]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dev[1], host[1])


def test_the_cuda_forms_of_morphology_and_maxima_give_the_same_labels(monkeypatch):
    """``conv2d`` disk morphology and ``max_pool2d`` maxima (used on CUDA) run here on the CPU."""
    regions = [
        disc_image([(40, 45), (42, 92)], [24, 26], shape=(85, 140), seed=1),
        disc_image([(45, 40), (40, 85), (80, 60)], [22, 24, 21], shape=(110, 120), seed=3),
        disc_image([(45, 75)], [28], outline=True),
    ]
    shifted = ct.split_regions(regions)
    m = torch.from_numpy(np.random.default_rng(2).random((2, 30, 41)) < 0.2).float()
    plain = [ct._dilate(m, 3), ct._erode(m, 2, 1.0), ct._max3x3(m)]
    monkeypatch.setattr(ct, "_on_cuda", lambda x: True)
    for a, b in zip(plain, [ct._dilate(m, 3), ct._erode(m, 2, 1.0), ct._max3x3(m)]):
        assert torch.equal(a, b)
    for a, b in zip(shifted, ct.split_regions(regions)):
        np.testing.assert_array_equal(a, b)


def test_the_classifier_option_selects_the_split():
    """``RBCClassifier.cell_split_backend`` reaches the crop path: the same inputs either way here."""
    from napari_sickle.models.multilabel import new_classifier

    torch.manual_seed(0)
    clf = new_classifier("efficientnet-lite0", input_size=32, min_side=80, pretrained=False, tta="none")
    assert clf.split == "cells" and clf.cell_split_backend == "auto"
    img = np.full((100, 400, 3), 190, np.uint8)
    img[:90, :150] = disc_image([(45, 50), (45, 99)], [25, 25])
    img[:90, 250:400] = disc_image([(45, 75)], [28])
    boxes = [[0, 0, 150, 90], [250, 0, 400, 90]]
    host, owner = clf.region_crops(img, boxes)
    clf.cell_split_backend = "torch"
    dev, owner_t = clf.region_crops(img, boxes)
    assert owner.tolist() == owner_t.tolist() == [0, 0, 1]
    assert torch.equal(host, dev)
    clf.cell_split_backend = "gpu"
    with pytest.raises(ValueError, match="unknown cell split backend"):
        clf.region_crops(img, boxes)
