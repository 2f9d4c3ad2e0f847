"""Detector test-time augmentation: view/unview mapping, box fusion, the checkpoint setting."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_sickle.models.detector import (
    TTA_VIEWS,
    RegionDetector,
    _unview_boxes,
    _view,
    default_config,
    fuse_tta,
    tta_mode,
)

BOX = (5.0, 8.0, 26.0, 15.0)  # x0, y0, x1, y1 of the bright rectangle (left half) in a 30 x 50 image


def _image():
    img = torch.zeros(3, 30, 50)
    x0, y0, x1, y1 = (int(v) for v in BOX)
    img[:, y0:y1, x0:x1] = 1.0
    return img


def _bright_box(img):
    ys, xs = np.nonzero(img[0].numpy() > 0.5)
    return np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)


@pytest.mark.parametrize("view", TTA_VIEWS["dihedral"])
def test_view_boxes_map_back_to_the_image(view):
    v = _view(_image(), view)
    assert v.shape[-2:] == ((50, 30) if view[0] else (30, 50))
    np.testing.assert_allclose(_unview_boxes(_bright_box(v), view, 30, 50), [BOX])


def test_fuse_tta_weighted_mean_and_view_average():
    e = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    views = [
        (np.array([[0, 0, 10, 10], [50, 50, 60, 60]]), np.array([0.8, 0.8]), np.array([1, 1])),
        (np.array([[1, 1, 11, 11]]), np.array([0.4]), np.array([1])),
        e,
        (np.array([[0, 0, 10, 10]]), np.array([0.9]), np.array([2])),
    ]  # other class: own cluster
    b, s, lab = fuse_tta(views)
    np.testing.assert_allclose(s, [1.2 / 4, 0.9 / 4, 0.8 / 4], rtol=1e-6)
    np.testing.assert_allclose(b[0], (0.8 * np.array([0, 0, 10, 10]) + 0.4 * np.array([1, 1, 11, 11])) / 1.2, rtol=1e-6)
    np.testing.assert_allclose(b[1], [0, 0, 10, 10])
    np.testing.assert_allclose(b[2], [50, 50, 60, 60])
    assert lab.tolist() == [1, 2, 1]
    assert fuse_tta([e, e])[0].shape == (0, 4)


class _LeftHalfModel:
    """Stands in for the Faster R-CNN: finds the bright rectangle (score 0.8) only when it lies
    in the left half of the image it is given."""

    def __init__(self):
        self.roi_heads = SimpleNamespace()
        self.transform = SimpleNamespace()

    def eval(self):
        return self

    def to(self, device):
        return self

    def __call__(self, images):
        out = []
        for img in images:
            b = _bright_box(img)
            found = (b[0, 0] + b[0, 2]) / 2 < img.shape[-1] / 2
            out.append(
                {
                    "boxes": torch.as_tensor(b if found else np.zeros((0, 4), np.float32)),
                    "scores": torch.tensor([0.8] if found else []),
                    "labels": torch.ones(int(found), dtype=torch.int64),
                }
            )
        return out


def test_detect_with_flip_views_uses_the_checkpoint_setting():
    det = RegionDetector(model=_LeftHalfModel(), config=default_config(scale=1.0), device=torch.device("cpu"))
    image = (_image().permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    b, s, _ = det.detect(image, score_threshold=0.05)
    np.testing.assert_allclose(b, [BOX])
    np.testing.assert_allclose(s, [0.8])
    det.config["tta"] = "flips"  # the rectangle is on the left in 2 of the 4 flipped views
    b, s, _ = det.detect(image, score_threshold=0.05)
    np.testing.assert_allclose(b, [BOX], atol=1e-5)
    np.testing.assert_allclose(s, [0.4], rtol=1e-6)
    assert len(det.detect(image, score_threshold=0.5)[0]) == 0  # threshold applies to the fused score
    np.testing.assert_allclose(det.detect(image, score_threshold=0.05, tta="none")[1], [0.8])


def test_tta_option_is_stored_and_checked(tmp_path):
    from napari_sickle.models.checkpoint import load_checkpoint
    from napari_sickle.training.detector import evaluate_detector, train_detector

    assert tta_mode(None) == "none" and tta_mode(True) == "flips" and tta_mode("Dihedral") == "dihedral"
    with pytest.raises(ValueError, match="tta must be one of none, flips, dihedral"):
        train_detector("simulated", tmp_path / "bad", tta="rot45")
    kw = dict(iters_per_epoch=2, batch_size=1, crop_size=128, n_smears=2, smear_shape=(160, 224))
    r = train_detector("simulated", tmp_path, epochs=1, tta="flips", **kw)
    assert load_checkpoint(r["checkpoint"], kind="detector")["config"]["tta"] == "flips"
    assert r["metrics"]["val_tta"]["tta"] == "flips" and 0.0 <= r["metrics"]["val_tta"]["ap50"] <= 1.0
    with pytest.raises(ValueError, match="tta must be one of"):
        evaluate_detector(r["checkpoint"], "simulated", device="cpu", tta="sideways")


def test_random_crop_transpose_keeps_boxes_on_their_cells():
    from napari_sickle.training.detector import _random_crop

    img = torch.full((3, 40, 60), 0.2)
    img[:, 8:20, 30:52] = 0.9
    boxes, labels = torch.tensor([[30.0, 8.0, 52.0, 20.0]]), torch.tensor([1])
    shapes = set()
    for seed in range(12):
        crop, t = _random_crop(img, boxes, labels, 64, np.random.default_rng(seed), rot90=True)
        shapes.add(tuple(crop.shape[-2:]))
        ys, xs = np.nonzero(crop[0].numpy() > float(crop[0].mean()))
        np.testing.assert_allclose(t["boxes"].numpy(), [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]])
    assert shapes == {(40, 60), (60, 40)}  # some crops transposed, some not


def test_ema_weights_are_saved_and_resume(tmp_path):
    from napari_sickle.models.checkpoint import load_checkpoint
    from napari_sickle.training.detector import train_detector

    kw = dict(iters_per_epoch=2, batch_size=1, crop_size=96, n_smears=2, smear_shape=(128, 160), lr=1e-3, rot90=True)
    train_detector("simulated", tmp_path / "a", epochs=1, ema=0.5, **kw)
    last = load_checkpoint(tmp_path / "a" / "last.pt", kind="detector")
    raw, avg = last["extra"]["raw_state_dict"], last["state_dict"]
    k = "roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(raw[k], avg[k])  # the checkpoint holds the average, not the raw weights
    assert last["recipe"]["ema"] == 0.5 and "transpose" in last["recipe"]["augment"]
    r = train_detector("simulated", tmp_path / "b", epochs=2, ema=0.5, resume=tmp_path / "a" / "last.pt", **kw)
    assert [h["epoch"] for h in r["history"]] == [1, 2]
    assert "raw_state_dict" in load_checkpoint(tmp_path / "b" / "last.pt", kind="detector")["extra"]
