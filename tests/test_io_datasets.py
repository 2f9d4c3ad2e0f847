"""Training-folder scanners find pairs, classes and splits and fail clearly."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_sickle.constants import RBC_TYPES
from napari_sickle.io.datasets import (
    DatasetError,
    read_multilabel_table,
    scan_class_folders,
    scan_image_mask_pairs,
    scan_voc,
)


def _png(p, shape=(6, 6), v=100):
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, v, np.uint8)).save(p)


def test_scan_class_folders_skips_unreadable(tmp_path):
    _png(tmp_path / "Sickle" / "a.png")
    _png(tmp_path / "Sickle" / "b.png")
    _png(tmp_path / "Oval" / "c.png")
    (tmp_path / "Oval" / "broken.png").write_bytes(b"")
    (tmp_path / "Oval" / "notes.txt").write_text("x")
    with pytest.warns(UserWarning, match="skipped 1"):
        df = scan_class_folders(tmp_path)
    assert sorted(df["label"]) == ["Oval", "Sickle", "Sickle"]
    assert df.attrs["skipped"] == 1 and df.attrs["skipped_files"][0].endswith("broken.png")
    with pytest.raises(DatasetError, match="no class sub-folders"):
        scan_class_folders(tmp_path / "Oval")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty.*no class sub-folders"):
        scan_class_folders(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        scan_class_folders(tmp_path / "nope")


def test_scan_class_folders_real(sickle_data):
    root = sickle_data / "sickle-rbc"
    if not root.is_dir():
        pytest.skip(f"{root} missing")
    df = scan_class_folders(root)
    assert len(df) + df.attrs["skipped"] == 821
    assert set(df["label"]) == {
        "Discocytes",
        "Oval",
        "Elongated",
        "Sickle-ISC",
        "Reticulocytes",
        "Granular",
        "Echinocytes",
        "Stomatocyte",
    }


def test_scan_pairs_layouts(tmp_path, fixtures_dir):
    df = scan_image_mask_pairs(fixtures_dir / "bbbc041seg")
    assert len(df) == 2 and df["mask"].str.endswith("_mask.png").all()
    _png(tmp_path / "ds" / "images" / "a.png")
    _png(tmp_path / "ds" / "masks" / "a.png")
    _png(tmp_path / "ds" / "images" / "b.png")
    with pytest.warns(UserWarning, match="without a partner"):
        df = scan_image_mask_pairs(tmp_path / "ds")
    assert len(df) == 1 and df.iloc[0]["mask"].endswith("masks/a.png")
    _png(tmp_path / "none" / "x.png")
    with pytest.raises(DatasetError, match="no image/mask pairs"):
        scan_image_mask_pairs(tmp_path / "none")


def test_scan_voc_with_split(tmp_path, fixtures_dir):
    df = scan_voc(fixtures_dir / "bccd")
    assert len(df) == 3 and "split" not in df
    root = tmp_path / "voc"
    for s in ("a", "b"):
        _png(root / "JPEGImages" / f"{s}.jpg")
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{s}.xml").write_text("<annotation/>")
    (root / "train.txt").write_text("a\n")
    (root / "val.txt").write_text("b\n")
    df = scan_voc(root)
    assert df["split"].tolist() == ["train", "val"]
    with pytest.raises(DatasetError, match="not a Pascal VOC folder, JPEGImages/ is missing"):
        scan_voc(tmp_path / "voc" / "JPEGImages")


def test_read_multilabel_table(tmp_path):
    _png(tmp_path / "crops" / "a.png")
    _png(tmp_path / "crops" / "b.png")
    t = pd.DataFrame({"path": ["crops/a.png", "crops/b.png"]})
    for i, c in enumerate(RBC_TYPES):
        t[c] = [i % 2, 1]
    t.to_csv(tmp_path / "t.csv", index=False)
    df = read_multilabel_table(tmp_path / "t.csv")
    assert list(df.columns) == ["path", *RBC_TYPES]
    assert df["path"].iloc[0] == str((tmp_path / "crops" / "a.png").resolve())
    t.drop(columns=["stomatocyte"]).to_csv(tmp_path / "u.csv", index=False)
    with pytest.raises(DatasetError, match=r"u\.csv.*stomatocyte"):
        read_multilabel_table(tmp_path / "u.csv")
