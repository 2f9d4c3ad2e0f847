"""`python -m napari_sickle.simulate`: datasets in the layouts the readers and trainers use."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from napari_sickle.cli.simulate import main, write_dataset
from napari_sickle.constants import RBC_TYPES, XU_FOLDER_TO_TYPE

SHAPE = ["--shape", "240x320"]


def _run(tmp_path, layout, n=2, extra=()):
    out = tmp_path / layout
    rc = main(["--out", str(out), "--n-images", str(n), "--seed", "5", "--layout", layout, *SHAPE, *extra])
    assert rc == 0
    return out


def test_pairs_layout_reads_back(tmp_path, capsys):
    from napari_sickle.io.datasets import scan_image_mask_pairs
    from napari_sickle.io.formats import read_regions_csv
    from napari_sickle.io.images import read_image
    from napari_sickle.io.masks import mask_to_regions, read_mask

    out = _run(tmp_path, "pairs", extra=["--edge-cells"])  # cut cells at the border too
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 2 and summary["layout"] == "pairs"
    pairs = scan_image_mask_pairs(out)
    assert len(pairs) == 2
    cells = pd.read_csv(out / "cells.csv")
    for img_path, mask_path in pairs.itertuples(index=False):
        img = read_image(img_path)
        assert img.shape == (240, 320, 3) and img.dtype == np.uint8
        mask = read_mask(mask_path)
        stem = img_path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        regions = read_regions_csv(out / "regions" / f"{stem}.csv")
        # the 4-connected BFS of io.masks finds exactly the written regions and boxes
        _, found = mask_to_regions(mask)
        np.testing.assert_array_equal(
            found[["x_min", "y_min", "x_max", "y_max"]].to_numpy(),
            regions[["x_min", "y_min", "x_max", "y_max"]].to_numpy(),
        )
        inst = read_image(out / "instances" / f"{stem}.tif")
        np.testing.assert_array_equal(inst > 0, mask)
        mine = cells[cells.image == f"{stem}.png"]
        assert len(mine) == inst.max() == len(np.unique(inst)) - 1
        # region type sets are the union of their cells' types
        for r in regions.itertuples(index=False):
            types = set(mine.loc[mine.region_id == r.region_id, "type"])
            assert types == {t for t in RBC_TYPES if getattr(r, t)}


def test_voc_layout_reads_back(tmp_path):
    from napari_sickle.io.datasets import scan_voc
    from napari_sickle.io.formats import read_regions_csv, read_voc

    out = _run(tmp_path, "voc", n=5)
    df = scan_voc(out)
    assert len(df) == 5
    assert sorted(df["split"]) == ["train"] * 4 + ["val"]
    regions = read_regions_csv(out / "regions.csv")
    for img, ann in df[["image", "annotation"]].itertuples(index=False):
        boxes = read_voc(ann)
        assert set(boxes["class"]) == {"RBC"}
        assert boxes.attrs["size"] == (240, 320, 3)
        name = img.rsplit("/", 1)[-1]
        ref = regions[regions.image == name]
        np.testing.assert_array_equal(
            boxes[["x_min", "y_min", "x_max", "y_max"]].to_numpy(), ref[["x_min", "y_min", "x_max", "y_max"]].to_numpy()
        )


def test_crops_layout_uses_xu_folders(tmp_path):
    from napari_sickle.io.datasets import scan_class_folders

    out = _run(tmp_path, "crops", n=2)
    df = scan_class_folders(out)
    assert sorted(set(df["label"])) == sorted(XU_FOLDER_TO_TYPE)
    assert (df.groupby("label").size() == 2).all()
    # the composer reads them back with the built-in mapping
    from napari_sickle.data.compose import load_crops

    crops = load_crops(out)
    assert sorted({c.type_name for c in crops}) == sorted(RBC_TYPES)


def test_patches_layout_is_a_multilabel_table(tmp_path):
    from napari_sickle.io.datasets import read_multilabel_table
    from napari_sickle.io.images import read_image

    out = _run(tmp_path, "patches", n=40)
    tab = read_multilabel_table(out / "patches.csv")
    assert len(tab) == 40
    assert set(np.unique(tab[list(RBC_TYPES)].to_numpy())) <= {0, 1}
    assert (tab[list(RBC_TYPES)].sum(axis=1) >= 1).all()
    raw = pd.read_csv(out / "patches.csv")
    assert (raw["n_cells"] > 1).any()
    assert ((raw["n_cells"] > 1) == (raw["n_cells"] >= 2)).all()
    img = read_image(tab["path"].iloc[0])
    assert img.ndim == 3 and img.shape[2] == 3


def test_refuses_to_overwrite_and_bad_args(tmp_path, capsys):
    out = _run(tmp_path, "crops", n=1)
    assert main(["--out", str(out), "--layout", "crops", "--n-images", "1"]) == 2
    assert "refusing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--layout", "nope"])
    with pytest.raises(ValueError):
        write_dataset(tmp_path / "y", "pairs", n_images=0)


def test_composed_from_crops_and_gray(tmp_path):
    crops = _run(tmp_path, "crops", n=2)
    out = tmp_path / "composed"
    s = write_dataset(out, "pairs", n_images=1, seed=1, shape=(240, 320), crops_root=crops, n_cells=12)
    assert s["composed_from"] == str(crops)
    assert s["cells"] >= 8
    g = write_dataset(tmp_path / "gray", "pairs", n_images=1, seed=1, shape=(240, 320), rgb=False)
    from napari_sickle.io.images import read_image

    assert read_image(next((tmp_path / "gray" / "images").iterdir())).ndim == 2
    assert g["images"] == 1


def test_module_entry_point(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_sickle.simulate",
            "--out",
            str(tmp_path / "m"),
            "--layout",
            "crops",
            "--n-images",
            "1",
            "--json-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert lines[0]["event"] == "progress" and lines[-1]["crops"] == 8
