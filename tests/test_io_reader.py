"""The npe2 reader claims the documented conventions, returns the right layers, and
fails with a message naming the file; the writers never overwrite and round-trip."""

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from napari_sickle.constants import RBC_TYPES
from napari_sickle.plugin._reader import napari_get_reader
from napari_sickle.plugin._writer import write_labels, write_regions_csv


def _read(path):
    reader = napari_get_reader(str(path))
    assert reader is not None, f"reader did not claim {path}"
    return reader(str(path))


def _synthetic_mask(shape=(40, 50)):
    m = np.zeros(shape, np.uint8)
    m[2:10, 3:12] = 255
    m[8:14, 12:20] = 255  # touches the first -> one region
    m[25:35, 30:45] = 255
    return m


# ------------------------------------------------------------------ images
@pytest.mark.parametrize(
    "arr,rgb",
    [
        (np.full((12, 16), 300, np.uint16), False),
        (np.zeros((12, 16, 3), np.uint8), True),
        (np.zeros((12, 16, 4), np.uint8), True),
        (np.zeros((12, 16), np.uint8), False),
    ],
)
def test_image_rgb_flag(tmp_path, arr, rgb):
    p = tmp_path / "smear.png"
    Image.fromarray(arr).save(p)
    [(data, kw, kind)] = _read(p)
    assert kind == "image" and kw["rgb"] is rgb and data.shape == arr.shape and data.dtype == arr.dtype


def test_image_tiff_16bit_rgb(tmp_path):
    arr = np.random.default_rng(0).integers(0, 4096, (10, 11, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "s.tiff", arr)
    [(data, kw, kind)] = _read(tmp_path / "s.tiff")
    assert kw["rgb"] and data.dtype == np.uint16 and kw["contrast_limits"] == (arr.min(), arr.max())


def test_real_images(fixtures_dir):
    [(data, kw, kind)] = _read(fixtures_dir / "bccd" / "JPEGImages" / "BloodImage_00000.jpg")
    assert kind == "image" and kw["rgb"] and data.shape == (480, 640, 3)
    [(data, kw, kind)] = _read(fixtures_dir / "chula-rbc12" / "Dataset" / "707.jpg")  # PNG data
    assert kind == "image" and data.shape == (480, 640, 3)
    [(data, kw, kind)] = _read(fixtures_dir / "bbbc041seg" / "002f20ad_img.png")
    assert kind == "image" and kw["rgb"] and data.shape == (512, 512, 3) and data.dtype == np.uint8


# ------------------------------------------------------------------ masks
def test_mask_file_convention(tmp_path):
    Image.fromarray(_synthetic_mask()).save(tmp_path / "cells_mask.png")
    [(labels, kw, kind)] = _read(tmp_path / "cells_mask.png")
    assert kind == "labels" and labels.shape == (40, 50) and labels.max() == 2
    f = kw["features"]
    assert list(f["index"]) == [1, 2]
    assert f.iloc[0][["x_min", "y_min", "x_max", "y_max"]].tolist() == [3, 2, 20, 14]
    assert f["area"].tolist() == [int((labels == 1).sum()), 150]
    # a plain image in masks/ beside images/ is a mask too
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "masks").mkdir()
    Image.fromarray(_synthetic_mask()).save(tmp_path / "ds" / "masks" / "a.png")
    [(_, _, kind)] = _read(tmp_path / "ds" / "masks" / "a.png")
    assert kind == "labels"


def test_real_bbbc041_mask_and_pair_folder(fixtures_dir):
    [(labels, kw, kind)] = _read(fixtures_dir / "bbbc041seg" / "002f20ad_mask.png")
    assert kind == "labels" and labels.shape == (512, 512)
    assert len(kw["features"]) == labels.max() >= 10
    layers = _read(fixtures_dir / "bbbc041seg")
    kinds = [k for _, _, k in layers]
    assert kinds == ["image", "labels"]
    (img, ikw, _), (lab, lkw, _) = layers
    assert img.shape == (2, 512, 512, 3) and ikw["rgb"] and lab.shape == (2, 512, 512)
    f = lkw["features"]
    assert f["region_id"].is_unique and set(f["slice"]) == {0, 1}
    assert set(np.unique(lab[0])) - {0} == set(f.loc[f.slice == 0, "region_id"])


def test_pair_folder_synthetic_and_size_mismatch(tmp_path):
    d = tmp_path / "pairs"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir()
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(d / "images" / "s1.png")
    Image.fromarray(_synthetic_mask()).save(d / "masks" / "s1.png")
    layers = _read(d)
    assert [k for *_, k in layers] == ["image", "labels"]
    assert layers[0][0].shape == (40, 50, 3) and layers[1][0].max() == 2
    Image.fromarray(np.full((30, 50, 3), 200, np.uint8)).save(d / "images" / "s2.png")
    Image.fromarray(_synthetic_mask()).save(d / "masks" / "s2.png")
    reader = napari_get_reader(str(d))
    with pytest.raises(ValueError, match=r"s2\.png.*50x40.*s2\.png.*50x30"):
        reader(str(d))


# ------------------------------------------------------------------ boxes and points
def test_voc_real_and_zero_box(tmp_path, fixtures_dir):
    [(data, kw, kind)] = _read(fixtures_dir / "bccd" / "Annotations" / "BloodImage_00000.xml")
    assert kind == "shapes" and kw["shape_type"] == "rectangle"
    assert len(data) == len(kw["features"]) and "class" in kw["features"]
    assert kw["features"]["class"].isin(["RBC", "WBC", "Platelets"]).all()
    wbc = kw["features"].index[kw["features"]["class"] == "WBC"][0]
    np.testing.assert_array_equal(data[wbc].min(0), [177, 260])  # (row, col) of xmin=260, ymin=177
    xml = (
        "<annotation><filename>q.jpg</filename>"
        "<object><name>RBC</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>9</xmax><ymax>5</ymax></bndbox></object>"
        "<object><name>RBC</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        "</annotation>"
    )
    (tmp_path / "q.xml").write_text(xml)
    with pytest.warns(UserWarning, match="degenerate"):
        [(data, kw, _)] = _read(tmp_path / "q.xml")
    assert len(data) == 1
    (tmp_path / "other.xml").write_text("<svg/>")
    assert napari_get_reader(str(tmp_path / "other.xml")) is None


def _regions(n=4):
    rng = np.random.default_rng(3)
    df = pd.DataFrame(
        {
            "image": "smear.png",
            "region_id": np.arange(1, n + 1),
            "x_min": rng.integers(0, 50, n),
            "y_min": rng.integers(0, 50, n),
        }
    )
    df["x_max"] = df.x_min + rng.integers(5, 20, n)
    df["y_max"] = df.y_min + rng.integers(5, 20, n)
    for t in RBC_TYPES:
        df[t] = rng.integers(0, 2, n)
    df["p_abnormal"] = rng.random(n).round(4)
    df["abnormal"] = (df["p_abnormal"] > 0.5).astype(int)
    return df


def test_regions_csv_reader_and_writer_roundtrip(tmp_path):
    df = _regions()
    src = tmp_path / "regions.csv"
    df.to_csv(src, index=False)
    [(data, kw, kind)] = _read(src)
    assert kind == "shapes" and len(data) == 4
    feats = kw["features"]
    for c in ["image", "region_id", *RBC_TYPES, "abnormal", "p_abnormal", "label"]:
        assert c in feats
    out = tmp_path / "out.csv"
    assert write_regions_csv(str(out), data, kw) == [str(out)]
    back = pd.read_csv(out)
    pd.testing.assert_frame_equal(back, pd.read_csv(src)[back.columns], check_dtype=False)
    assert set(back.columns) == set(df.columns)  # derived 'label' not written back
    with pytest.raises(FileExistsError, match="out.csv"):
        write_regions_csv(str(out), data, kw)
    # non-regions CSVs are not claimed
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "other.csv", index=False)
    assert napari_get_reader(str(tmp_path / "other.csv")) is None


def test_points_real_and_synthetic(tmp_path, fixtures_dir):
    [(data, kw, kind)] = _read(fixtures_dir / "chula-rbc12" / "Label" / "707.txt")
    assert kind == "points" and data.shape == (30, 2)
    assert (kw["features"]["class"] == "elliptocyte").all()
    np.testing.assert_array_equal(data[0], [461, 572])  # (row, col) from "572 461 12"
    (tmp_path / "p.txt").write_text("10 20 1\n30 40 2\n")
    [(data, kw, kind)] = _read(tmp_path / "p.txt")
    assert data.tolist() == [[20, 10], [40, 30]] and kw["features"]["class"].tolist() == ["1", "2"]


# ------------------------------------------------------------------ crop folders
def test_real_wbc_crops(fixtures_dir):
    [(stack, kw, kind)] = _read(fixtures_dir / "wbc-zheng2018")
    assert kind == "image" and stack.shape == (4, 120, 120, 3) and kw["rgb"]
    assert kw["metadata"]["classes"] == ["neutrophil", "lymphocyte", "monocyte", "eosinophil"]
    assert kw["metadata"]["files"][0] == "Dataset 1/002.bmp"


def test_class_folder_crops_padded(tmp_path):
    d = tmp_path / "crops"
    for cls, shape, v in [("Sickle", (10, 6), 50), ("Oval", (4, 8), 90), ("Oval", (7, 7), 120)]:
        (d / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full(shape, v, np.uint8)).save(d / cls / f"{v}.png")
    (d / "Oval" / "zero.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        [(stack, kw, kind)] = _read(d)
    assert kind == "image" and stack.shape == (3, 10, 8) and kw["rgb"] is False
    meta = kw["metadata"]
    assert meta["classes"] == ["Oval", "Oval", "Sickle"]
    assert meta["files"] == ["Oval/120.png", "Oval/90.png", "Sickle/50.png"]
    i = meta["files"].index("Oval/90.png")
    (r0, c0), (h, w) = meta["offsets"][i], meta["shapes"][i]
    assert (stack[i, r0 : r0 + h, c0 : c0 + w] == 90).all() and (stack[i] != 0).sum() == h * w


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs_named_in_errors(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"zero\.png.*0 bytes"):
        _read(tmp_path / "zero.png")
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 50, 3), dtype=np.uint8)).save(good)
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"trunc\.png.*truncated"):
        _read(tmp_path / "trunc.png")
    tifffile.imwrite(tmp_path / "vol.tif", np.zeros((2, 2, 5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"vol\.tif.*4-D"):
        _read(tmp_path / "vol.tif")
    for name in ("zero.xml", "zero.csv", "zero.txt"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(ValueError, match=name.replace(".", r"\.") + r".*empty \(0 bytes\)"):
            _read(tmp_path / name)
    (tmp_path / "cut.xml").write_text("<annotation><object><name>RBC</name><bndbox><xmin>1")
    with pytest.raises(ValueError, match=r"cut\.xml.*not valid XML"):
        _read(tmp_path / "cut.xml")
    assert napari_get_reader(str(tmp_path / "missing.png")) is None
    assert napari_get_reader(str(tmp_path / "x.nd2")) is None


# ------------------------------------------------------------------ labels writer
def test_write_labels_png_tiff(tmp_path):
    lab = np.zeros((20, 30), np.int32)
    lab[2:5, 2:5] = 1
    lab[10:15, 10:20] = 300  # > 255: needs 16 bits
    png = tmp_path / "lab.png"
    assert write_labels(str(png), lab, {}) == [str(png)]
    back = np.asarray(Image.open(png))
    np.testing.assert_array_equal(back, lab)
    tif = tmp_path / "lab.tif"
    big = lab.copy()
    big[0, 0] = 70000
    write_labels(str(tif), big, {})
    np.testing.assert_array_equal(tifffile.imread(tif), big)
    with pytest.raises(ValueError, match="70000.*16-bit PNG"):
        write_labels(str(tmp_path / "big.png"), big, {})
    assert not (tmp_path / "big.png").exists()
    before = png.read_bytes()
    with pytest.raises(FileExistsError, match="lab.png"):
        write_labels(str(png), lab * 0, {})
    assert png.read_bytes() == before
