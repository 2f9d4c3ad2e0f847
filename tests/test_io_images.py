"""read_image sniffs content, keeps dtype, and names the file in every error."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_sickle.io.images import ImageReadError, read_image, to_rgb_uint8


@pytest.mark.parametrize("ext", ["png", "jpg", "tif", "bmp"])
def test_rgb_roundtrip_formats(tmp_path, ext):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    p = tmp_path / f"a.{ext}"
    if ext == "tif":
        tifffile.imwrite(p, img)
    else:
        Image.fromarray(img).save(p)
    out = read_image(p)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    if ext != "jpg":
        np.testing.assert_array_equal(out, img)


def test_gray16_and_rgba(tmp_path):
    g = np.arange(600, dtype=np.uint16).reshape(20, 30) * 100
    Image.fromarray(g).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.dtype == np.uint16 and out.shape == (20, 30)
    np.testing.assert_array_equal(out, g)
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 100
    Image.fromarray(rgba).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (5, 6, 4)
    rgb = to_rgb_uint8(out)
    assert rgb.shape == (5, 6, 3) and (rgb[..., 0] == 200).all()
    rgb16 = to_rgb_uint8(g)
    assert rgb16.dtype == np.uint8 and rgb16.max() == 255 and rgb16.min() == 0


def test_png_data_with_jpg_name_opens(tmp_path, fixtures_dir):
    img = read_image(fixtures_dir / "chula-rbc12" / "Dataset" / "707.jpg")
    assert img.shape == (480, 640, 3) and img.dtype == np.uint8
    p = tmp_path / "fake.jpg"
    Image.fromarray(np.full((4, 5), 7, np.uint8)).save(p, format="PNG")
    assert (read_image(p) == 7).all()


def test_zero_byte(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png.*empty \(0 bytes\)"):
        read_image(p)


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(1)
    p = tmp_path / "full.png"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
    data = p.read_bytes()
    t = tmp_path / "trunc.png"
    t.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"trunc\.png.*(truncated|corrupt)"):
        read_image(t)


def test_4d_tiff(tmp_path):
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ImageReadError, match=r"stack\.tif.*4-D"):
        read_image(p)


def test_not_an_image(tmp_path):
    p = tmp_path / "text.png"
    p.write_text("hello")
    with pytest.raises(ImageReadError, match="text.png.*unrecognised"):
        read_image(p)
