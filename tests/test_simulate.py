"""The procedural smear simulator: ground truth consistency, clusters, determinism, looks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import binary_erosion
from skimage.measure import label, regionprops

from napari_sickle.constants import RBC_TYPES
from napari_sickle.data.simulate import (
    SimulatedSmear,
    regions_from_instances,
    simulate_cell,
    simulate_smear,
    touching_cells,
    touching_pairs,
)


@pytest.fixture(scope="session")
def smear() -> SimulatedSmear:
    return simulate_smear(seed=0)


def _props_by_type(smear):
    """regionprops of every (visible) cell, grouped by type name."""
    out = {t: [] for t in RBC_TYPES}
    for rp in regionprops(smear.instances):
        out[RBC_TYPES[smear.cell_types[rp.label - 1]]].append(rp)
    return out


# ---------------------------------------------------------------- contract / ground truth
def test_default_smear_shape_and_dtypes(smear):
    assert smear.image.shape == (1080, 1920, 3) and smear.image.dtype == np.uint8
    assert smear.instances.shape == (1080, 1920) and smear.instances.dtype == np.int32
    assert smear.region_labels.shape == (1080, 1920) and smear.region_labels.dtype == np.int32
    assert smear.cell_types.ndim == 1
    # an image, not a flat field: cells are darker than the background
    fg = smear.instances > 0
    gray = smear.image.mean(axis=2)
    assert gray[~fg].mean() - gray[fg].mean() > 30


def test_default_smear_has_enough_cells_and_every_type(smear):
    assert smear.n_cells >= 150
    counts = np.bincount(smear.cell_types, minlength=len(RBC_TYPES))
    assert (counts > 0).all(), counts
    # realistic SCD mix: discs most common, sickle second
    assert counts[0] == counts.max()
    assert counts[1] >= counts[2:].max()


def test_instance_ids_are_contiguous_and_typed(smear):
    ids = np.unique(smear.instances)
    ids = ids[ids > 0]
    np.testing.assert_array_equal(ids, np.arange(1, smear.n_cells + 1))
    assert ((smear.cell_types >= 0) & (smear.cell_types < len(RBC_TYPES))).all()


def test_region_labels_are_connected_regions_of_cells(smear):
    np.testing.assert_array_equal(smear.region_labels, label(smear.instances > 0))
    # no diagonal-only contacts: 4- and 8-connected regions agree, so a reader using the
    # paper's 4-neighbour BFS on the saved mask finds exactly these regions
    np.testing.assert_array_equal(smear.region_labels, label(smear.instances > 0, connectivity=1))
    # and every cell is one 4-connected piece (none split into two regions)
    for rp in regionprops(smear.instances):
        assert label(rp.image, connectivity=1).max() == 1, rp.label


def test_regions_table_schema_boxes_and_type_sets(smear):
    df = smear.regions
    for col in ["image", "region_id", "x_min", "y_min", "x_max", "y_max", *RBC_TYPES, "n_cells"]:
        assert col in df.columns, col
    assert len(df) == smear.region_labels.max()
    props = {rp.label: rp for rp in regionprops(smear.region_labels)}
    for row in df.itertuples(index=False):
        rp = props[row.region_id]
        r0, c0, r1, c1 = rp.bbox
        assert (row.x_min, row.y_min, row.x_max, row.y_max) == (c0, r0, c1, r1)
        members = np.unique(smear.instances[smear.region_labels == row.region_id])
        members = members[members > 0]
        assert row.n_cells == len(members)
        expected = set(smear.cell_types[members - 1].tolist())
        got = {k for k, t in enumerate(RBC_TYPES) if getattr(row, t) == 1}
        assert got == expected
        assert all(getattr(row, t) in (0, 1) for t in RBC_TYPES)
    # multi-cell regions with mixed types exist (the multi-label case)
    multi = df[df["n_cells"] > 1]
    assert len(multi) >= 5
    assert (multi[list(RBC_TYPES)].sum(axis=1) > 1).any()


def test_touching_definition():
    inst = np.zeros((12, 12), np.int32)
    inst[1:4, 1:4] = 1
    inst[1:4, 4:6] = 2  # shares an edge with 1
    inst[8:10, 8:10] = 3
    inst[10:12, 10:12] = 4  # diagonal contact with 3
    inst[5:7, 0:2] = 5  # one background row away from 1: not touching
    assert touching_pairs(inst) == {(1, 2), (3, 4)}
    np.testing.assert_array_equal(touching_cells(inst), [1, 2, 3, 4])
    # same as dilating each cell by one pixel (3x3) and looking for other ids
    from scipy.ndimage import binary_dilation

    brute = set()
    for i in range(1, 6):
        near = np.unique(inst[binary_dilation(inst == i, np.ones((3, 3)))])
        brute |= {(min(i, j), max(i, j)) for j in near if j not in (0, i)}
    assert brute == touching_pairs(inst)


def test_default_smear_touching_fraction(smear):
    frac = len(touching_cells(smear.instances)) / smear.n_cells
    assert frac >= 0.10, frac
    # and not everything is one big clump: most regions are single cells
    assert (smear.regions["n_cells"] == 1).mean() > 0.5


def test_cells_run_off_the_edge_like_a_real_field_of_view():
    def border(a):
        return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])

    s = simulate_smear(seed=0, shape=(540, 960), edge_cells=True)
    ids = np.unique(border(s.instances))
    assert len(ids[ids > 0]) >= 5
    r = s.regions
    assert ((r.x_min == 0) | (r.y_min == 0) | (r.x_max == 960) | (r.y_max == 540)).sum() >= 5
    # cut cells keep the guarantees: one 4-connected piece each, regions = connected components
    np.testing.assert_array_equal(s.region_labels, label(s.instances > 0, connectivity=1))
    for rp in regionprops(s.instances):
        assert label(rp.image, connectivity=1).max() == 1
    # default: whole cells only
    assert not border(simulate_smear(seed=0, shape=(300, 400)).instances).any()


def test_overlapping_cells_top_wins_and_darker_overlap():
    from napari_sickle.data.simulate import paint_instances

    a = np.zeros((6, 6), bool)
    a[1:5, 1:5] = True
    inst = paint_instances([(a, 0, 0), (a, 2, 2)], (10, 10))
    assert inst[3, 3] == 2 and inst[1, 1] == 1 and inst[5, 5] == 2  # the later (top) cell wins
    s = simulate_smear(seed=5, shape=(400, 600), n_cells=40, cluster_fraction=1.0, blur=0, noise=0)
    over = s.coverage >= 2
    assert over.sum() > 200  # overlaps exist ...
    # coverage and mask agree up to the few one-pixel bridges of diagonal contacts
    assert ((s.coverage > 0) != (s.instances > 0)).sum() < 20
    # ... and look darker than single-layer cell pixels, as absorbances add up
    gray = s.image.mean(axis=2)
    assert gray[over].mean() < gray[s.coverage == 1].mean() - 15
    # every cell stays visible
    counts = np.bincount(s.instances.ravel())[1:]
    assert counts.min() >= 30


def test_determinism_per_seed():
    a = simulate_smear(seed=3, shape=(300, 400))
    b = simulate_smear(seed=3, shape=(300, 400))
    c = simulate_smear(seed=4, shape=(300, 400))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.instances, b.instances)
    np.testing.assert_array_equal(a.cell_types, b.cell_types)
    pd.testing.assert_frame_equal(a.regions, b.regions)
    assert not np.array_equal(a.image, c.image)


def test_type_mix_and_grayscale_options():
    s = simulate_smear(seed=1, shape=(300, 400), n_cells=15, type_mix={"elongated_sickle": 1.0}, rgb=False)
    assert s.image.ndim == 2 and s.image.dtype == np.uint8
    assert s.n_cells > 5
    assert (s.cell_types == RBC_TYPES.index("elongated_sickle")).all()
    # weights given as a 6-vector, folder names accepted as keys
    s2 = simulate_smear(seed=1, shape=(300, 400), n_cells=20, type_mix={"Echinocytes": 1, "Oval": 1})
    assert set(s2.cell_types.tolist()) == {0, 4}
    with pytest.raises(ValueError):
        simulate_smear(seed=1, shape=(100, 100), type_mix={"not_a_type": 1})
    for bad in (dict(n_cells=-1), dict(diameter=(80, 40)), dict(shape=(0, 10)), dict(max_overlap=1.5)):
        with pytest.raises(ValueError):
            simulate_smear(seed=1, **{"shape": (100, 100), **bad})
    # an empty field is allowed (analysis code tests images without cells)
    empty = simulate_smear(seed=1, shape=(100, 120), n_cells=0)
    assert empty.n_cells == 0 and not empty.instances.any() and len(empty.regions) == 0


def test_regions_from_instances_small_case():
    inst = np.zeros((10, 10), np.int32)
    inst[1:3, 1:3] = 1
    inst[1:3, 3:5] = 2
    inst[6:9, 6:8] = 3
    rl, df = regions_from_instances(inst, [0, 1, 4], "x.png")
    assert list(df["region_id"]) == [1, 2]
    r1 = df.iloc[0]
    assert (r1.x_min, r1.y_min, r1.x_max, r1.y_max) == (1, 1, 5, 3)
    assert r1.oval_disc == 1 and r1.elongated_sickle == 1 and r1.echinocyte == 0 and r1.n_cells == 2
    r2 = df.iloc[1]
    assert r2.echinocyte == 1 and r2.oval_disc == 0 and r2.n_cells == 1


# ---------------------------------------------------------------- per-type appearance
def test_sizes_like_real_data(smear):
    diam = np.array(
        [rp.equivalent_diameter_area for rp in regionprops(smear.instances) if smear.cell_types[rp.label - 1] == 0]
    )
    assert 40 <= np.median(diam) <= 85


def test_sickle_cells_are_elongated_discs_are_round(smear):
    by = _props_by_type(smear)
    ecc_sickle = np.median([rp.eccentricity for rp in by["elongated_sickle"]])
    ecc_disc = np.median([rp.eccentricity for rp in by["oval_disc"]])
    assert ecc_sickle > 0.85, ecc_sickle
    assert ecc_disc < 0.6, ecc_disc


def test_echinocytes_have_spiky_rims(smear):
    by = _props_by_type(smear)
    # only unoccluded cells: regions holding one cell
    single = set(smear.regions.loc[smear.regions.n_cells == 1, "region_id"])

    def sol(t):
        vals = [rp.solidity for rp in by[t] if smear.region_labels[tuple(map(int, rp.coords[0]))] in single]
        return np.median(vals)

    assert sol("echinocyte") < 0.93
    assert sol("oval_disc") > 0.97
    assert sol("oval_disc") - sol("echinocyte") > 0.05


def _cells(type_name, n=6, d=70, seed=0):
    rng = np.random.default_rng(seed)
    return [simulate_cell(type_name, d, rng) for _ in range(n)]


def _radial_rel(mask):
    """Distance from the mask centroid divided by the equivalent radius."""
    ys, xs = np.nonzero(mask)
    yy, xx = np.indices(mask.shape)
    r = np.hypot(yy - ys.mean(), xx - xs.mean())
    return r / np.sqrt(mask.sum() / np.pi)


def test_simulate_cell_patch_and_mask():
    for t in RBC_TYPES:
        img, mask = simulate_cell(t, 64, np.random.default_rng(1))
        assert img.dtype == np.uint8 and img.shape == mask.shape + (3,)
        assert mask.dtype == bool and mask.any() and not mask[0].any() and not mask[:, 0].any()
        assert 0.6 * 32**2 * np.pi * 0.3 < mask.sum() < 1.6 * 38**2 * np.pi
    g, _ = simulate_cell("Sickle-ISC", 64, 2, rgb=False)
    assert g.ndim == 2


def test_disc_has_central_pallor():
    for img, mask in _cells("oval_disc"):
        g = img.mean(axis=2)
        rr = _radial_rel(mask)
        centre = g[(rr < 0.25) & mask].mean()
        rim = g[(rr > 0.6) & (rr < 0.85) & mask].mean()
        assert centre > rim + 10, (centre, rim)


def test_sickle_has_no_pallor_and_is_dense():
    for img, mask in _cells("elongated_sickle"):
        g = img.mean(axis=2)
        inner = binary_erosion(mask, np.ones((5, 5)))
        assert g[inner].std() < 12


def test_stomatocyte_pallor_is_a_slit_disc_pallor_is_round():
    def pallor_ecc(img, mask):
        g = img.mean(axis=2)
        inner = binary_erosion(mask, np.ones((9, 9)))
        bright = inner & (g > np.percentile(g[inner], 50) + 0.5 * (g[inner].max() - np.percentile(g[inner], 50)))
        lab = label(bright)
        rp = max(regionprops(lab), key=lambda r: r.area)
        return rp.eccentricity

    stoma = np.median([pallor_ecc(*c) for c in _cells("stomatocyte")])
    disc = np.median([pallor_ecc(*c) for c in _cells("oval_disc")])
    assert stoma > 0.9, stoma
    assert disc < stoma - 0.15, (disc, stoma)


def _dark_spots(img, mask, delta=35):
    """Fraction of inner cell pixels much darker than the cell's median."""
    g = img.mean(axis=2)
    inner = binary_erosion(mask, np.ones((5, 5)))
    return float((g[inner] < np.median(g[inner]) - delta).mean())


def test_granular_cells_have_dense_granules():
    gran = np.median([_dark_spots(*c) for c in _cells("granular")])
    disc = np.median([_dark_spots(*c) for c in _cells("oval_disc")])
    assert gran > 0.02 and disc < 0.005, (gran, disc)


def test_reticulocytes_have_bluish_reticulum():
    def blue_ratio(img, mask):
        # reticulum absorbs red light: pixels whose red is low relative to blue
        r = img[..., 0].astype(float)
        b = img[..., 2].astype(float)
        return float(((b - r) > 5)[mask].mean())

    ret = np.median([blue_ratio(*c) for c in _cells("reticulocyte")])
    disc = np.median([blue_ratio(*c) for c in _cells("oval_disc")])
    assert ret > 0.03 and disc < 0.005, (ret, disc)


def test_stain_styles_change_colours_not_geometry():
    """Each style gives its real smear's colours (cells vs background); a seed's cells stay put."""
    from napari_sickle.data.simulate import STAIN_STYLES, simulate_smear

    base = simulate_smear(seed=5, shape=(200, 300), style="pink")
    for name, (bg, _) in STAIN_STYLES.items():
        sm = simulate_smear(seed=5, shape=(200, 300), style=name)
        np.testing.assert_array_equal(sm.instances, base.instances)
        img = sm.image.astype(float)
        back = np.median(img[sm.instances == 0], axis=0) / 255
        cell = np.median(img[sm.instances > 0], axis=0)
        assert np.allclose(back, bg, atol=0.08), (name, back)
        assert (cell < np.median(img[sm.instances == 0], axis=0)).all()  # cells absorb in every channel
    lilac = simulate_smear(seed=5, shape=(200, 300), style="giemsa-lilac").image[base.instances > 0]
    pink = base.image[base.instances > 0]
    assert lilac[:, 2].mean() > lilac[:, 0].mean() and pink[:, 0].mean() > pink[:, 2].mean()
    with pytest.raises(ValueError, match="unknown style"):
        simulate_smear(seed=5, shape=(50, 50), style="nope")
    auto = {simulate_smear(seed=s, shape=(60, 80), n_cells=2, style="auto").image[0, 0].tobytes() for s in range(8)}
    assert len(auto) > 1  # "auto" varies the style with the seed
