"""Real-smear detector pieces: cell diameter estimate and rescale, Chula point boxes, the
``real:`` data spec, diameter-aware detection, colour augmentation (tiny synthetic inputs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _discs(shape=(240, 320), d=30, spacing=48, offset=(30, 30), bg=220, fg=120):
    """A gray-background RGB image with dark discs of diameter ``d`` on a grid; (image, centres)."""
    h, w = shape
    img = np.full((h, w, 3), bg, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    centres = []
    for cy in range(offset[0], h - d // 2, spacing):
        for cx in range(offset[1], w - d // 2, spacing):
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= (d / 2) ** 2
            img[m] = fg
            centres.append((cx, cy))
    return img, np.array(centres, float)


@pytest.mark.parametrize("d", [20, 40])
def test_estimate_cell_diameter_follows_the_cells(d):
    from napari_sickle.models.scale import estimate_cell_diameter

    img, _ = _discs(d=d, spacing=int(d * 1.6), offset=(d, d))
    est = estimate_cell_diameter(img)
    assert est == pytest.approx(d, rel=0.2)
    # a 2x larger copy gives a 2x larger diameter (subsampled internally)
    big = np.repeat(np.repeat(img, 2, 0), 2, 1)
    assert estimate_cell_diameter(big, max_side=400) == pytest.approx(2 * est, rel=0.15)


def test_estimate_cell_diameter_none_without_cells():
    from napari_sickle.models.scale import estimate_cell_diameter

    assert estimate_cell_diameter(np.full((100, 100, 3), 200, np.uint8)) is None
    assert estimate_cell_diameter(np.zeros((4, 4))) is None


def test_rescale_helpers():
    from napari_sickle.models.scale import boxes_to_original, rescale_factor, rescale_image

    assert rescale_factor(60.0, 30.0) == pytest.approx(0.5)
    assert rescale_factor(None, 30.0) == 1.0 and rescale_factor(0.0, 30.0) == 1.0
    assert rescale_factor(1.0, 30.0) == 2.0  # clipped
    img = np.zeros((100, 80, 3), np.uint8)
    out = rescale_image(img, 0.5)
    assert out.shape == (50, 40, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(boxes_to_original([[5, 5, 10, 20]], 0.5), [[10, 10, 20, 40]])


def test_boxes_from_points_one_box_per_point_plus_unlabelled_cells():
    from napari_sickle.data.real_smears import boxes_from_points, points_inside

    img, centres = _discs(d=30, spacing=45, offset=(30, 30))
    pts = np.c_[centres[1:], np.zeros(len(centres) - 1)]  # the first cell is left unlabelled
    boxes, from_point = boxes_from_points(img, pts)
    assert from_point.sum() == len(pts)
    lab = boxes[from_point]
    wh = np.c_[lab[:, 2] - lab[:, 0], lab[:, 3] - lab[:, 1]]
    assert np.all(np.abs(wh - 31) <= 3)  # each labelled cell's own box
    assert points_inside(lab, pts[:, :2]).all()
    # the unlabelled cell is added
    assert (~from_point).sum() == 1
    assert points_inside(boxes[~from_point], centres[:1]).all()


def _write_layout(root):
    """A tiny SICKLE_DATA tree: bccd (VOC + split files), bbbc041seg (images/masks), chula (points)."""
    from skimage.io import imsave

    img, centres = _discs(d=24, spacing=40, offset=(24, 24))
    (root / "bccd" / "JPEGImages").mkdir(parents=True)
    (root / "bccd" / "Annotations").mkdir()
    for stem in ("a", "b"):
        imsave(root / "bccd" / "JPEGImages" / f"{stem}.jpg", img, check_contrast=False)
        objs = "".join(
            f"<object><name>RBC</name><bndbox><xmin>{x - 12:.0f}</xmin><ymin>{y - 12:.0f}</ymin>"
            f"<xmax>{x + 12:.0f}</xmax><ymax>{y + 12:.0f}</ymax></bndbox></object>"
            for x, y in centres
        )
        (root / "bccd" / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename>{objs}</annotation>"
        )
    (root / "bccd" / "train.txt").write_text("a\n")
    (root / "bccd" / "val.txt").write_text("b\n")
    (root / "bbbc041seg" / "images").mkdir(parents=True)
    (root / "bbbc041seg" / "masks").mkdir()
    mask = np.where(img[..., :1] < 170, 255, 0).astype(np.uint8).repeat(3, axis=2)
    for k in range(4):
        imsave(root / "bbbc041seg" / "images" / f"m{k}.png", img, check_contrast=False)
        imsave(root / "bbbc041seg" / "masks" / f"m{k}.png", mask, check_contrast=False)
    (root / "chula-rbc12" / "Dataset").mkdir(parents=True)
    (root / "chula-rbc12" / "Label").mkdir()
    for n in (1, 5):
        imsave(root / "chula-rbc12" / "Dataset" / f"{n}.jpg", img, check_contrast=False)
        (root / "chula-rbc12" / "Label" / f"{n}.txt").write_text("\n".join(f"{x:.0f} {y:.0f} 0" for x, y in centres))
    return len(centres)


def test_load_real_smears_splits_by_documented_rules(tmp_path):
    from napari_sickle.data.real_smears import load_real_smears

    n = _write_layout(tmp_path)
    tr = load_real_smears(tmp_path, "train")
    va = load_real_smears(tmp_path, "val")
    assert sorted(it["name"] for it in tr) == [
        "bbbc041seg/m0.png",
        "bbbc041seg/m1.png",
        "bbbc041seg/m2.png",
        "bccd/a.jpg",
        "chula-rbc12/1.jpg",
    ]
    assert sorted(it["name"] for it in va) == ["bbbc041seg/m3.png", "bccd/b.jpg", "chula-rbc12/5.jpg"]
    for it in tr + va:
        assert it["diameter"] == pytest.approx(24, rel=0.25)
        assert len(it["boxes"]) == n and it["labels"].tolist() == [1] * n
    assert [len(it["points"]) for it in va if it["source"] == "chula-rbc12"] == [n]


def test_detector_rescales_to_its_training_diameter():
    from napari_sickle.models.detector import new_detector

    det = new_detector("efficientnet-lite0-fpn", pretrained=False, scale=0.5)
    img, _ = _discs(d=40, spacing=64, offset=(40, 40))
    assert det.image_scale(img) == 0.5  # no training diameter: the fixed scale
    det.config["cell_diameter"] = 20.0
    assert det.image_scale(img) == pytest.approx(0.5, rel=0.2)
    assert det.image_scale(img, cell_diameter=80) == pytest.approx(0.25)
    assert det.image_scale(np.full((64, 64, 3), 200, np.uint8)) == 0.5  # no cells: fallback
    seen = []
    real = det.model.forward

    def spy(images, *a, **k):
        seen.append(tuple(images[0].shape[-2:]))
        return real(images, *a, **k)

    det.model.forward = spy
    b, s, lab = det.detect(img, score_threshold=0.0, cell_diameter=80)
    assert seen == [(60, 80)]  # 240x320 resized by 20/80
    assert b.shape[1] == 4 and (len(b) == 0 or b[:, 2].max() <= 320)


def test_color_augment_keeps_shape_and_range():
    from napari_sickle.training.detector import _color_augment, _random_crop

    crop = torch.rand(3, 40, 50)
    for seed in range(10):
        out = _color_augment(crop, np.random.default_rng(seed))
        assert out.shape == crop.shape and float(out.min()) >= 0 and float(out.max()) <= 1.0 + 1e-6
    img = torch.rand(3, 120, 160)
    boxes, labels = torch.tensor([[10.0, 10.0, 50.0, 40.0]]), torch.tensor([1])
    c, t = _random_crop(img, boxes, labels, 64, np.random.default_rng(0), color_aug=True)
    assert c.shape == (3, 64, 64)


def test_train_detector_on_real_spec(tmp_path):
    from napari_sickle.models.checkpoint import load_checkpoint
    from napari_sickle.training.detector import train_detector

    _write_layout(tmp_path / "data")
    logs = []
    r = train_detector(
        f"real:{tmp_path / 'data'}",
        tmp_path / "out",
        epochs=1,
        iters_per_epoch=2,
        crop_size=96,
        pretrained=False,
        cell_diameter=20,
        color_aug=True,
        scale_jitter=0.2,
        log=logs.append,
    )
    ck = load_checkpoint(r["checkpoint"], kind="detector")
    assert ck["config"]["cell_diameter"] == 20.0 and ck["recipe"]["source_balance"] is True
    assert ck["config"]["region_merge"] is False  # analyze_smear keeps the boxes it learned
    ep = [d for d in logs if d["event"] == "epoch"][0]
    assert set(ep["per_source"]) == {"bccd", "bbbc041seg", "chula-rbc12"}
    assert "points_inside" in ep["per_source"]["chula-rbc12"]
    data = [d for d in logs if d["event"] == "data"][0]
    assert data["n_train"] == 5 and data["n_val"] == 3


def test_detect_regions_passes_the_cell_diameter_override():
    from napari_sickle.analysis.smear import detect_regions

    seen = {}

    class Stub:
        class_names = ["cell region"]
        config = {}

        def detect(self, rgb, **kw):
            seen.update(kw)
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)

    img, _ = _discs()
    detect_regions(img, Stub())
    assert "cell_diameter" not in seen  # default: the detector estimates it
    detect_regions(img, Stub(), cell_diameter=55)
    assert seen["cell_diameter"] == 55.0
