"""The napari sample-data contribution: layer tuples built from a simulated smear."""

from __future__ import annotations

import numpy as np

from napari_sickle.constants import RBC_TYPES


def test_make_sample_smear_layers():
    from napari_sickle.data.simulate import simulate_smear
    from napari_sickle.plugin._sample_data import make_sample_smear

    layers = make_sample_smear()
    assert [t for _, _, t in layers] == ["image", "labels", "shapes"]
    (img, ik, _), (lab, lk, _), (rects, sk, _) = layers
    assert img.shape == (1080, 1920, 3) and img.dtype == np.uint8 and ik["rgb"] is True
    assert lab.shape == (1080, 1920) and np.issubdtype(lab.dtype, np.integer)
    assert len({ik["name"], lk["name"], sk["name"]}) == 3
    # the same smear as the Python API (seed 0)
    ref = simulate_smear(seed=0)
    np.testing.assert_array_equal(lab, ref.instances)
    # one rectangle per connected region, corners in (row, col) from the region boxes
    feats = sk["features"]
    assert sk["shape_type"] == "rectangle"
    assert len(rects) == len(feats) == len(ref.regions) == ref.region_labels.max()
    for r, row in zip(rects, ref.regions.itertuples(index=False)):
        assert r.shape == (4, 2)
        assert r[:, 0].min() == row.y_min and r[:, 0].max() == row.y_max
        assert r[:, 1].min() == row.x_min and r[:, 1].max() == row.x_max
    for t in RBC_TYPES:
        np.testing.assert_array_equal(feats[t].to_numpy(), ref.regions[t].to_numpy())
    assert {"label", "abnormal", "n_cells"} <= set(feats.columns)
    assert sk["text"]["string"] == "{label}"
    # abnormal = any type other than Oval/Disc
    np.testing.assert_array_equal(feats["abnormal"], feats[list(RBC_TYPES[1:])].max(axis=1))
    # the labels layer knows each cell's type
    lf = lk["features"]
    assert len(lf) == ref.n_cells + 1
    assert list(lf["type"][1:]) == [RBC_TYPES[t] for t in ref.cell_types]
