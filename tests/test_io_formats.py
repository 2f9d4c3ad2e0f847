"""Masks -> regions, regions CSV schema, Pascal VOC and point files."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_sickle.constants import RBC_TYPES
from napari_sickle.io.formats import (
    FormatError,
    find_class_names,
    looks_like_points,
    read_points,
    read_regions_csv,
    read_voc,
    write_regions_csv,
)
from napari_sickle.io.masks import mask_to_regions, read_mask


def test_mask_to_regions_boxes_and_touching():
    m = np.zeros((10, 12), bool)
    m[1:4, 1:3] = True  # region A: 3x2
    m[1:4, 3:5] = True  # touches A -> same region
    m[6:9, 8:11] = True  # region B
    m[5, 7] = True  # diagonal to B only: separate under 4-connectivity
    labels, df = mask_to_regions(m)
    assert labels.dtype == np.int32 and labels.max() == 3
    a = df.iloc[0]
    assert (a.x_min, a.y_min, a.x_max, a.y_max, a.area) == (1, 1, 5, 4, 12)
    for r in df.itertuples():
        sub = labels[r.y_min : r.y_max, r.x_min : r.x_max]
        assert (sub == r.region_id).sum() == r.area == (labels == r.region_id).sum()
    _, df8 = mask_to_regions(m, connectivity=2)
    assert len(df8) == 2


def test_read_mask_rgb_0_255(tmp_path):
    m = np.zeros((8, 8, 3), np.uint8)
    m[2:5, 2:5] = 255
    Image.fromarray(m).save(tmp_path / "x_mask.png")
    mask = read_mask(tmp_path / "x_mask.png")
    assert mask.dtype == bool and mask.sum() == 9


def test_real_bbbc041_mask(fixtures_dir):
    mask = read_mask(fixtures_dir / "bbbc041seg" / "002f20ad_mask.png")
    labels, df = mask_to_regions(mask)
    assert mask.shape == (512, 512)
    assert len(df) >= 10 and df["area"].sum() == mask.sum()


def _regions_df(n=3):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "image": "s.png",
            "region_id": np.arange(1, n + 1),
            "x_min": [1, 10, 20][:n],
            "y_min": [2, 12, 22][:n],
            "x_max": [5, 18, 30][:n],
            "y_max": [6, 19, 33][:n],
        }
    )
    for t in RBC_TYPES:
        df[t] = rng.integers(0, 2, n)
    df["score"] = [0.9, 0.5, 0.7][:n]
    df["extra"] = ["a", "b", "c"][:n]
    return df


def test_regions_csv_roundtrip_and_no_overwrite(tmp_path):
    df = _regions_df()
    p = tmp_path / "r.csv"
    write_regions_csv(df, p)
    back = read_regions_csv(p)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert list(back.columns[:12]) == ["image", "region_id", "x_min", "y_min", "x_max", "y_max", *RBC_TYPES]
    before = p.read_bytes()
    with pytest.raises(FileExistsError, match="r.csv"):
        write_regions_csv(df, p)
    assert p.read_bytes() == before


def test_regions_csv_errors(tmp_path):
    df = _regions_df().drop(columns=["granular"])
    p = tmp_path / "bad.csv"
    df.to_csv(p, index=False)
    with pytest.raises(FormatError, match=r"bad\.csv.*granular"):
        read_regions_csv(p)
    df = _regions_df()
    df.loc[1, "echinocyte"] = 2
    df.to_csv(tmp_path / "bad2.csv", index=False)
    with pytest.raises(FormatError, match="echinocyte.*row 2"):
        read_regions_csv(tmp_path / "bad2.csv")


def test_voc_real_and_zero_size_box(tmp_path, fixtures_dir):
    df = read_voc(fixtures_dir / "bccd" / "Annotations" / "BloodImage_00000.xml")
    assert list(df.columns) == ["image", "class", "x_min", "y_min", "x_max", "y_max"]
    assert set(df["class"]) <= {"RBC", "WBC", "Platelets"} and "WBC" in set(df["class"])
    assert (df.x_max > df.x_min).all() and df.attrs["size"] == (480, 640, 3)
    xml = """<annotation><filename>z.jpg</filename>
      <object><name>RBC</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>5</xmax><ymax>9</ymax></bndbox></object>
      <object><name>WBC</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>
    </annotation>"""
    p = tmp_path / "z.xml"
    p.write_text(xml)
    with pytest.warns(UserWarning, match=r"z\.xml.*degenerate.*RBC"):
        df = read_voc(p)
    assert len(df) == 1 and df.iloc[0]["class"] == "WBC" and df.attrs["dropped"] == 1
    (tmp_path / "broken.xml").write_text("<annotation><object>")
    with pytest.raises(FormatError, match="broken.xml.*not valid XML"):
        read_voc(tmp_path / "broken.xml")


def test_points_real_and_synthetic(tmp_path, fixtures_dir):
    p = fixtures_dir / "chula-rbc12" / "Label" / "1.txt"
    df = read_points(p)
    ref = pd.read_csv(fixtures_dir / "chula-rbc12" / "labels.csv")
    ref = ref[ref.image == "Dataset/1.jpg"]
    assert len(df) == len(ref)
    np.testing.assert_array_equal(df[["x", "y", "class_id"]].to_numpy(), ref[["x", "y", "class_id"]].to_numpy())
    names = find_class_names(p)
    assert names[0] == "normal" and names[6] == "ovalocyte"
    q = tmp_path / "pts.txt"
    q.write_text("1 2 0\n\n3 4 5\n")
    assert looks_like_points(q)
    assert read_points(q).to_dict("list") == {"x": [1, 3], "y": [2, 4], "class_id": [0, 5]}
    (tmp_path / "split.txt").write_text("BloodImage_00001\nBloodImage_00002\n")
    assert not looks_like_points(tmp_path / "split.txt")
    (tmp_path / "bad.txt").write_text("1 2 0\n1 2 0\n1 2 0\n1 2 0\n1 2 0\nfoo bar baz\n")
    with pytest.raises(FormatError, match="bad.txt.*line 6"):
        read_points(tmp_path / "bad.txt")
