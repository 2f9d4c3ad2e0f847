"""Cell lightness matching (models.stain), its use by the Analyze pipeline
(analysis.smear.classify_regions) and the ``attach-stain`` step that stores the reference."""

from __future__ import annotations

import numpy as np
import pytest


def _smear(cell_rgb=(200, 150, 170), bg=235, seed=0) -> np.ndarray:
    """A light background with 12 round cells of the given colour and a little noise."""
    rng = np.random.default_rng(seed)
    img = np.full((160, 240, 3), bg, np.float32)
    yy, xx = np.mgrid[:160, :240]
    for k in range(12):
        cy, cx = 25 + 55 * (k // 4), 30 + 60 * (k % 4)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 18**2] = cell_rgb
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_match_lightness_gives_the_cells_the_reference_lightness():
    from skimage.color import rgb2lab

    from napari_sickle.models.stain import cell_lightness, match_lightness, stain_reference

    assert cell_lightness(np.full((50, 50, 3), 230, np.uint8)) is None  # no cells
    pale = _smear((215, 175, 190))
    mean, sd = cell_lightness(pale)
    ref = {"cell_lightness": mean - 15.0, "cell_lightness_sd": 2 * sd}
    out = match_lightness(pale, ref)
    assert out.shape == pale.shape and out.dtype == np.uint8
    m2, s2 = cell_lightness(out)
    assert m2 == pytest.approx(ref["cell_lightness"], abs=1.0) and s2 == pytest.approx(
        ref["cell_lightness_sd"], rel=0.15
    )
    # hue and saturation stay: a* and b* of the cells move by little
    fg = out[..., 1] < 200
    assert np.abs(rgb2lab(out)[fg][:, 1:].mean(0) - rgb2lab(pale)[fg][:, 1:].mean(0)).max() < 4.0
    assert match_lightness(np.full((50, 50, 3), 230, np.uint8), ref) is None
    r = stain_reference([(50.0, 3.0), None, (54.0, 5.0), (60.0, 4.0)])
    assert r == {"cell_lightness": 54.0, "cell_lightness_sd": 4.0, "smears": 3}
    with pytest.raises(ValueError, match="no smear"):
        stain_reference([None])


class _Reader:
    """A classifier stand-in: uncertain on pale cells, sure on dark ones; counts its readings."""

    def __init__(self, ref):
        self.config = {} if ref is None else {"stain_reference": ref}
        self.calls = 0

    def predict_boxes(self, image, boxes, batch_size=64, progress=None):
        from napari_sickle.models.stain import cell_lightness

        self.calls += 1
        sure = cell_lightness(image)[0] < 70
        p = np.tile([0.98 if sure else 0.6, 0.01, 0.0, 0.0, 0.02 if sure else 0.45, 0.0], (len(boxes), 1))
        if progress is not None:
            progress("classify", len(boxes), len(boxes))
        return p.astype(np.float32)


def test_classify_regions_reads_an_uncertain_smear_again_with_matched_lightness():
    from napari_sickle.analysis.smear import classify_regions, type_uncertainty

    pale = _smear((225, 190, 205))
    boxes = np.array([[10, 5, 50, 45], [70, 5, 110, 45]], np.float32)
    ref = {"cell_lightness": 55.0, "cell_lightness_sd": 4.0}
    seen = []
    clf = _Reader(ref)
    probs, matched = classify_regions(pale, boxes, clf, progress=lambda *a: seen.append(a[0]))
    assert matched and clf.calls == 2 and type_uncertainty(probs) < 0.1
    assert seen[0] == "classify" and len(seen) == 3 and set(seen[1:]) == {"classify (cell lightness matched)"}
    # without a reference (a user's own checkpoint) the smear is read once, as it is
    clf = _Reader(None)
    probs, matched = classify_regions(pale, boxes, clf)
    assert not matched and clf.calls == 1 and type_uncertainty(probs) > 0.5
    # a smear read surely is read once
    clf = _Reader(ref)
    probs, matched = classify_regions(_smear((150, 90, 120)), boxes, clf)
    assert not matched and clf.calls == 1


def test_attach_stain_stores_the_reference_of_the_chula_training_smears(tmp_path, fixtures_dir):
    """``attach-stain`` measures the Chula training smears (not the validation ones) and
    leaves the networks as they are."""
    import torch

    from napari_sickle.models.checkpoint import save_checkpoint
    from napari_sickle.models.multilabel import RBCClassifier
    from napari_sickle.models.stain import cell_lightness
    from napari_sickle.training import real_classifier as rc
    from napari_sickle.training.stain_reference import chula_training_lightness

    torch.manual_seed(0)
    clf = rc._new_clf(pretrained=False, split="cells")
    save_checkpoint(clf.to_checkpoint(), tmp_path / "clf.pt")
    with pytest.raises(SystemExit):
        rc.main(["attach-stain", "--classifier", str(tmp_path / "clf.pt")])  # no --out
    data = tmp_path / "data"
    data.mkdir()
    (data / "chula-rbc12").symlink_to(fixtures_dir / "chula-rbc12")
    rc.main(
        [
            "attach-stain",
            "--classifier",
            str(tmp_path / "clf.pt"),
            "--out",
            str(tmp_path / "out.pt"),
            "--data",
            str(data),
        ]
    )
    out = RBCClassifier.from_checkpoint(tmp_path / "out.pt")
    ref = out.config["stain_reference"]
    measured = chula_training_lightness(fixtures_dir / "chula-rbc12")
    assert ref["smears"] == len(measured) == 2  # images 1 and 707; 100 is a validation smear
    assert ref["cell_lightness"] == pytest.approx(np.median([m[0] for m in measured]))
    from napari_sickle.io.images import read_image, to_rgb_uint8

    val = cell_lightness(to_rgb_uint8(read_image(fixtures_dir / "chula-rbc12" / "Dataset" / "100.jpg")))
    assert val[0] != pytest.approx(ref["cell_lightness"], abs=1e-6)
    assert out.recipe["stain_reference"] == ref
    for k, v in clf.net.heads.state_dict().items():
        assert torch.equal(out.net.heads.state_dict()[k], v)


def test_the_shipped_default_carries_its_stain_reference():
    from napari_sickle.models import zoo
    from napari_sickle.models.multilabel import RBCClassifier

    m = zoo.default("rbc")
    ref = RBCClassifier.from_checkpoint(zoo.weights_dir() / m.files["classifier"]["file"]).config["stain_reference"]
    assert ref["smears"] > 300 and 40 < ref["cell_lightness"] < 70 and 1 < ref["cell_lightness_sd"] < 10


def test_the_batch_command_reads_smears_like_the_analyze_button(tmp_path, tiny_rbc_models, monkeypatch):
    """``python -m napari_sickle.analyze`` classifies through ``classify_regions`` too, and its
    summary.csv says when a smear was read with matched lightness (then no SCD call)."""
    import imageio.v3 as iio
    import pandas as pd

    from napari_sickle.analysis import smear
    from napari_sickle.analyze import main
    from napari_sickle.data.simulate import simulate_smear

    calls = []

    def reading(rgb, boxes, classifier, **_kw):
        calls.append(len(boxes))
        p = np.zeros((len(boxes), 6), np.float32)
        p[:, 0] = 0.99
        return p, True

    monkeypatch.setattr(smear, "classify_regions", reading)
    iio.imwrite(tmp_path / "smear.png", simulate_smear(seed=9, shape=(240, 320)).image)
    det, clf = tiny_rbc_models.detector_path, tiny_rbc_models.classifier_path
    args = [str(tmp_path / "smear.png"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(args + ["--detector", det, "--classifier", clf]) == 0
    summ = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert calls and bool(summ["lightness_matched"][0]) and summ["n_regions"][0] == calls[0]
    assert summ["scd_call"][0] == "inconclusive"
