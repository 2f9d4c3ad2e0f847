"""Composer: multi-cell patches and smears from class folders of single-cell crops."""

from __future__ import annotations

import warnings

import imageio.v3 as iio
import numpy as np
import pytest
from skimage.measure import label, regionprops

from napari_sickle.constants import RBC_TYPES, XU_FOLDER_TO_TYPE
from napari_sickle.data.compose import (
    Crop,
    compose_patches,
    compose_smear,
    crops_from_arrays,
    load_crops,
    segment_crop,
)
from napari_sickle.data.simulate import simulate_cell, touching_cells, touching_pairs

FOLDERS = list(XU_FOLDER_TO_TYPE)  # Discocytes, Oval, Elongated, Sickle-ISC, ...


@pytest.fixture(scope="module")
def crop_dir(tmp_path_factory):
    """A tiny Xu-style class folder set made with the procedural single-cell renderer."""
    root = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(7)
    truth = {}
    for folder in FOLDERS:
        (root / folder).mkdir()
        for k in range(3):
            img, mask = simulate_cell(XU_FOLDER_TO_TYPE[folder], float(rng.uniform(50, 75)), rng)
            # file names carry no class information
            name = f"{rng.integers(1e9):09d}.png"
            iio.imwrite(root / folder / name, img if k else img.mean(axis=2).astype(np.uint8))
            truth[str(root / folder / name)] = mask
    (root / "Discocytes" / "empty.png").write_bytes(b"")
    (root / "Oval" / "truncated.png").write_bytes((root / "Oval").iterdir().__next__().read_bytes()[:60])
    (root / "notes").mkdir()
    (root / "notes" / "x.png").write_bytes(b"")
    return root, truth


@pytest.fixture(scope="module")
def crops(crop_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_crops(crop_dir[0])


def _check_ground_truth(sm):
    """The same guarantees as the procedural simulator."""
    n = sm.n_cells
    ids = np.unique(sm.instances)
    np.testing.assert_array_equal(ids[ids > 0], np.arange(1, n + 1))
    np.testing.assert_array_equal(sm.region_labels, label(sm.instances > 0))
    np.testing.assert_array_equal(sm.region_labels, label(sm.instances > 0, connectivity=1))
    props = {rp.label: rp for rp in regionprops(sm.region_labels)}
    assert len(sm.regions) == len(props)
    for row in sm.regions.itertuples(index=False):
        r0, c0, r1, c1 = props[row.region_id].bbox
        assert (row.x_min, row.y_min, row.x_max, row.y_max) == (c0, r0, c1, r1)
        members = np.unique(sm.instances[sm.region_labels == row.region_id])
        members = members[members > 0]
        assert row.n_cells == len(members)
        assert {k for k, t in enumerate(RBC_TYPES) if getattr(row, t)} == set(sm.cell_types[members - 1].tolist())


# ------------------------------------------------------------------------------ loading
def test_load_crops_maps_folders_skips_bad_files(crop_dir, crops):
    root, truth = crop_dir
    assert len(crops) == 3 * len(FOLDERS)
    assert crops.skipped == 2  # zero-byte and truncated PNG, counted not fatal
    assert any("empty.png" in f for f in crops.skipped_files)
    for c in crops:
        assert isinstance(c, Crop)
        folder = c.path.split("/")[-2]
        assert c.type_name == XU_FOLDER_TO_TYPE[folder]
        assert c.image.ndim == 3 and c.image.shape[2] == 3 and c.image.dtype == np.uint8
        assert c.mask.shape == c.image.shape[:2] and c.mask.dtype == bool
    # Oval + Discocytes -> oval_disc; Elongated + Sickle-ISC -> elongated_sickle
    counts = np.bincount([c.type_index for c in crops], minlength=6)
    assert counts.tolist() == [6, 6, 3, 3, 3, 3]


def test_load_crops_warns_and_errors(tmp_path, crop_dir):
    with pytest.warns(UserWarning, match="notes"):
        load_crops(crop_dir[0])
    with pytest.raises(ValueError, match="does not exist"):
        load_crops(tmp_path / "missing")
    (tmp_path / "Granular").mkdir()
    with pytest.raises(ValueError, match="no usable crops"):
        load_crops(tmp_path)


def test_segmentation_matches_rendered_masks(crop_dir, crops):
    _, truth = crop_dir
    ious = []
    for c in crops:
        t = truth[c.path]
        ious.append((c.mask & t).sum() / (c.mask | t).sum())
    assert np.median(ious) > 0.85, np.median(ious)
    assert min(ious) > 0.6, min(ious)


def test_segment_crop_outline_style_cell():
    """Xu et al. crops show a dark rim and a bright halo around a background-grey interior."""
    h = w = 64
    yy, xx = np.indices((h, w))
    r = np.hypot(yy - 31.5, xx - 33)
    img = np.full((h, w), 150.0)
    img[(r > 22) & (r < 25)] = 90  # dark rim
    img[(r >= 25) & (r < 27)] = 200  # halo
    img += np.random.default_rng(0).normal(0, 2, img.shape)
    m = segment_crop(np.clip(img, 0, 255).astype(np.uint8))
    disc = r < 25
    assert (m & disc).sum() / (m | disc).sum() > 0.8
    assert not segment_crop(np.full((40, 40, 3), 128, np.uint8)).any()


# ------------------------------------------------------------------------------ patches
def test_compose_patches_are_connected_multilabel_regions(crops):
    items = compose_patches(crops, 12, seed=1, max_cells=4, min_cells=2, return_masks=True)
    assert len(items) == 12
    for patch, types, n_cells, inst in items:
        assert patch.dtype == np.uint8 and patch.ndim == 3 and patch.shape[2] == 3
        assert inst.shape == patch.shape[:2]
        assert types.shape == (6,) and set(np.unique(types)) <= {0, 1}
        assert 2 <= n_cells <= 4
        ids = np.unique(inst)
        assert len(ids[ids > 0]) == n_cells
        # all cells form one region (touching/overlapping), and the patch is its bounding box + margin
        assert label(inst > 0).max() == 1
        assert len(touching_pairs(inst)) >= n_cells - 1
        ys, xs = np.nonzero(inst)
        assert ys.min() <= 4 and xs.min() <= 4
        assert patch.shape[0] - 1 - ys.max() <= 4 and patch.shape[1] - 1 - xs.max() <= 4
        # cells are darker/different from the background: the patch is not flat
        assert patch[inst > 0].std() > 5
    # multi-label: some patches hold more than one type
    assert sum(int(t.sum() > 1) for _, t, _, _ in items) >= 3


def test_compose_patches_types_come_from_folders_and_seed_is_deterministic(crops):
    echino = [c for c in crops if c.type_name == "echinocyte"]
    items = compose_patches(echino, 5, seed=3, max_cells=3)
    for _, types, n in items:
        assert types.tolist() == [0, 0, 0, 0, 1, 0] and 1 <= n <= 3
    a = compose_patches(crops, 4, seed=9)
    b = compose_patches(crops, 4, seed=9)
    for (pa, ta, na), (pb, tb, nb) in zip(a, b):
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(ta, tb)
        assert na == nb
    with pytest.raises(ValueError):
        compose_patches([], 1)


def test_compose_patches_type_mix(crops):
    items = compose_patches(crops, 10, seed=0, max_cells=2, type_mix={"stomatocyte": 1.0})
    assert all(t.tolist() == [0, 0, 0, 0, 0, 1] for _, t, _ in items)


# ------------------------------------------------------------------------------ smears
def test_compose_smear_ground_truth(crops):
    sm = compose_smear(crops, seed=2, shape=(540, 960))
    assert sm.image.shape == (540, 960, 3) and sm.image.dtype == np.uint8
    assert sm.n_cells >= 30
    _check_ground_truth(sm)
    assert len(touching_cells(sm.instances)) / sm.n_cells >= 0.10
    # every type available in the crops shows up
    assert set(sm.cell_types.tolist()) == set(range(6))
    # background level estimated from the crops' borders
    crop_bg = np.median([c.background for c in crops], axis=0)
    img_bg = np.median(sm.image[sm.instances == 0], axis=0)
    assert np.all(np.abs(img_bg - crop_bg) < 0.1 * crop_bg + 5), (img_bg, crop_bg)
    # cells differ from the background where they are
    assert np.abs(sm.image[sm.instances > 0].astype(float) - img_bg).mean() > 10


def test_compose_smear_deterministic_and_augmented(crops):
    a = compose_smear(crops, seed=4, shape=(300, 400), n_cells=12)
    b = compose_smear(crops, seed=4, shape=(300, 400), n_cells=12)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.instances, b.instances)
    # random scale/rotation: cell areas are not just the crops' mask areas
    areas = np.bincount(a.instances.ravel())[1:]
    crop_areas = {int(c.mask.sum()) for c in crops}
    assert sum(int(x) not in crop_areas for x in areas) >= len(areas) // 2


def test_crops_from_arrays():
    rng = np.random.default_rng(0)
    items = [simulate_cell(t, 60, rng)[0] for t in RBC_TYPES]
    cs = crops_from_arrays(list(zip(items, RBC_TYPES)))
    assert [c.type_index for c in cs] == list(range(6))
    assert all(c.mask.sum() > 500 for c in cs)


# ------------------------------------------------------------------------------ real data
def test_real_sickle_rbc_crops(sickle_data):
    root = sickle_data / "sickle-rbc"
    if not root.is_dir():
        pytest.skip(f"{root} is missing")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crops = load_crops(root)
    assert len(crops) >= 780
    assert set(c.type_index for c in crops) == set(range(6))
    # masks cover the cell, not the whole crop nor a sliver (crops are tight around a cell)
    frac = np.array([c.mask.mean() for c in crops])
    assert 0.4 < np.median(frac) < 0.85
    assert (frac > 0.25).mean() > 0.97
    sm = compose_smear(crops, seed=0)
    assert sm.image.shape == (1080, 1920, 3)
    assert sm.n_cells >= 150
    assert len(touching_cells(sm.instances)) / sm.n_cells >= 0.10
    _check_ground_truth(sm)
    items = compose_patches(crops, 20, seed=0)
    assert all(1 <= n <= 4 and t.sum() >= 1 for _, t, n in items)
    assert any(t.sum() >= 2 for _, t, _ in items)
