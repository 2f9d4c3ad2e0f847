"""RBC engine: AP50, crops, training entry points, analyze_smear and its bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_sickle.constants import RBC_TYPES


@pytest.fixture(scope="module")
def models(tiny_rbc_models):
    return tiny_rbc_models


@pytest.fixture(scope="module")
def small_smear():
    from napari_sickle.data.simulate import simulate_smear

    return simulate_smear(seed=77, shape=(320, 480))


# ---------------------------------------------------------------------------------- AP50
def test_ap50_hand_computed_case():
    from napari_sickle.training.detector import ap50, average_precision

    gts = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([[0, 0, 10, 10]], float)]
    # image 0: TP (0.9), FP (0.8, no overlap), duplicate of GT0 (0.7 -> FP); GT1 missed
    # image 1: TP (0.6)
    dets = [
        (np.array([[0, 0, 10, 10], [50, 50, 60, 60], [1, 1, 10, 10]], float), np.array([0.9, 0.8, 0.7])),
        (np.array([[0, 0, 10, 11]], float), np.array([0.6])),
    ]
    # ranked: TP, FP, FP, TP; recall 1/3, 1/3, 1/3, 2/3; precision 1, 1/2, 1/3, 1/2
    # envelope: 1 up to recall 1/3, then 1/2 up to 2/3 -> AP = 1/3 * 1 + 1/3 * 1/2 = 0.5
    ap, n_gt = average_precision(dets, gts)
    assert n_gt == 3
    assert ap == pytest.approx(0.5)
    res = ap50(
        [(d[0], d[1], np.ones(len(d[1]), int)) for d in dets], [(g, np.ones(len(g), int)) for g in gts], ["cell region"]
    )
    assert res["ap50"] == pytest.approx(0.5) and res["n_images"] == 2
    # more than 100 detections per image all count (no pycocotools-style cap)
    many = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(150)], float)
    ap_many, _ = average_precision([(many, np.linspace(1, 0.5, 150))], [many])
    assert ap_many == pytest.approx(1.0)


def test_score_real_checks_the_labels():
    """An image with no annotated box only adds false positives: score_real counts it, gives
    AP50 without it, and the share of kept boxes touching no annotated box."""
    from napari_sickle.training.detector_metrics import score_real

    cell = np.array([[0, 0, 10, 10]], float)
    items = [
        {"source": "bccd", "boxes": cell},
        {"source": "bccd", "boxes": np.zeros((0, 4))},  # cells on it, none boxed
    ]
    preds = [
        (np.array([[0, 0, 10, 10], [40, 40, 50, 50]], float), np.array([0.6, 0.3]), np.ones(2, int)),
        (np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float), np.array([0.9, 0.8]), np.ones(2, int)),
    ]
    r = score_real(preds, items, score_threshold=0.5)["bccd"]
    assert r["n_images_without_boxes"] == 1
    assert r["ap50"] == pytest.approx(1 / 3)  # ranked FP, FP, TP: precision 1/3 at recall 1
    assert r["ap50_images_with_boxes"] == pytest.approx(1.0)
    assert r["n_detections"] == 3 and r["kept_touching_no_box"] == pytest.approx(2 / 3)


def test_crops_from_boxes_resizes_region():
    from napari_sickle.models.multilabel import crops_from_boxes

    img = np.zeros((100, 200, 3), np.uint8)
    img[10:50, 20:60] = 255
    c = crops_from_boxes(img, [[20, 10, 60, 50], [100, 60, 140, 100]], 16, mean=(0, 0, 0), std=(1, 1, 1))
    assert tuple(c.shape) == (2, 3, 16, 16)
    assert float(c[0, :, 1:-1, 1:-1].min()) > 0.99 and float(c[0].min()) > 0.9 and float(c[1].max()) < 0.01


# ---------------------------------------------------------------------------------- training
def test_train_and_evaluate_multilabel_simulated(tmp_path):
    from napari_sickle.models.checkpoint import load_checkpoint
    from napari_sickle.training.multilabel import evaluate_multilabel, train_multilabel

    logs = []
    r = train_multilabel("simulated", tmp_path, epochs=2, n_smears=2, smear_shape=(240, 360), log=logs.append, folds=2)
    assert Path(r["checkpoint"]).is_file() and (tmp_path / "last.pt").is_file()
    assert [h["epoch"] for h in r["history"]] == [1, 2]
    assert all(json.dumps(d) for d in logs)
    assert len(r["metrics"]["cv"]["folds"]) == 2
    ck = load_checkpoint(r["checkpoint"], kind="multilabel")
    assert ck["config"]["types"] == list(RBC_TYPES) and "abnormal_model_skops" in ck["extra"]
    m = evaluate_multilabel(r["checkpoint"], "simulated", device="cpu", n_smears=1, smear_shape=(320, 480))
    assert set(m) >= {"auc", "mean_auc", "exact_match_accuracy", "abnormal_accuracy", "n"}
    assert m["n"] > 10 and 0.5 < m["mean_auc"] <= 1.0  # held-out smear: better than chance
    # resume continues from last.pt
    r2 = train_multilabel(
        "simulated", tmp_path / "resumed", epochs=3, n_smears=2, smear_shape=(240, 360), resume=tmp_path / "last.pt"
    )
    assert [h["epoch"] for h in r2["history"]] == [1, 2, 3]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_multilabel("simulated", tmp_path / "x", resume=tmp_path / "missing.pt")


def test_train_multilabel_class_folders(tmp_path):
    import imageio.v3 as iio

    from napari_sickle.data.simulate import simulate_cell
    from napari_sickle.io.datasets import DatasetError
    from napari_sickle.training.multilabel import load_patches

    rng = np.random.default_rng(0)
    for folder, t in [("Discocytes", "oval_disc"), ("Sickle-ISC", "elongated_sickle")]:
        (tmp_path / folder).mkdir()
        for i in range(3):
            patch, _ = simulate_cell(t, 50, rng)
            iio.imwrite(tmp_path / folder / f"P{i}_{i}.png", patch)
    (tmp_path / "Sickle-ISC" / "broken.png").write_bytes(b"")
    ps = load_patches(tmp_path)
    assert len(ps) == 6 and ps.skipped == 1
    assert ps.Y[:, RBC_TYPES.index("elongated_sickle")].sum() == 3
    (tmp_path / "Unknown").mkdir()
    patch, _ = simulate_cell("oval_disc", 50, rng)
    iio.imwrite(tmp_path / "Unknown" / "a.png", patch)
    with pytest.raises(DatasetError, match="Unknown"):
        load_patches(tmp_path)


def test_train_detector_resume_and_evaluate(tmp_path):
    from napari_sickle.models.checkpoint import load_checkpoint
    from napari_sickle.training.detector import evaluate_detector, train_detector

    kw = dict(iters_per_epoch=2, batch_size=1, crop_size=128, n_smears=2, smear_shape=(160, 224))
    r = train_detector("simulated", tmp_path, epochs=1, region_merge={"delta": 8.0}, **kw)
    assert Path(r["checkpoint"]).is_file() and (tmp_path / "last.pt").is_file()
    assert r["history"][0]["metric_name"] == "val_ap50"
    merge = load_checkpoint(r["checkpoint"], kind="detector")["config"]["region_merge"]
    assert merge["method"] == "foreground" and merge["delta"] == 8.0  # stored with the model
    r2 = train_detector("simulated", tmp_path / "b", epochs=2, resume=tmp_path / "last.pt", **kw)
    assert [h["epoch"] for h in r2["history"]] == [1, 2]
    assert load_checkpoint(r2["checkpoint"], kind="detector")["config"]["region_merge"] == merge
    m = evaluate_detector(r["checkpoint"], "simulated", device="cpu", n_smears=1, smear_shape=(160, 224))
    assert set(m) == {"ap50", "ap50_per_class", "n_images"} and m["n_images"] == 1
    assert 0.0 <= m["ap50"] <= 1.0


def _three_cells():
    """Gray 100x170 field (background 150) with two touching dark discs and one apart."""
    from skimage.draw import disk

    gray = np.full((100, 170), 150.0, np.float32)
    for c in ((40, 30), (40, 58), (50, 130)):  # discs 1 and 2 overlap by 2 px
        gray[disk(c, 15, shape=gray.shape)] = 120.0
    return gray


def test_region_merge_one_box_per_connected_region():
    from napari_sickle.models.detector import apply_region_merge, background_deviation_mask

    gray = _three_cells()
    fg = background_deviation_mask(gray)
    from scipy import ndimage as ndi

    assert ndi.label(fg)[1] == 2  # touching discs are one region
    boxes = np.array([[15, 25, 46, 56], [43, 25, 74, 56], [115, 35, 146, 66], [90, 80, 100, 90]], np.float32)
    scores = np.array([0.6, 0.9, 0.7, 0.3], np.float32)
    b, s, lab = apply_region_merge(gray, boxes, scores, np.ones(4, np.int64), {"method": "foreground"})
    assert len(b) == 3 and list(s) == pytest.approx([0.9, 0.7, 0.3])
    np.testing.assert_allclose(b[0], [15, 25, 74, 56], atol=1)  # union of the two touching cells
    np.testing.assert_allclose(b[1], [115, 35, 146, 66], atol=1)
    np.testing.assert_allclose(b[2], boxes[3])  # no cell pixels: kept as it is
    same = apply_region_merge(gray, boxes, scores, np.ones(4, np.int64), None)
    assert same[0] is boxes  # off: untouched
    with pytest.raises(ValueError, match="region_merge method"):
        apply_region_merge(gray, boxes, scores, np.ones(4, np.int64), {"method": "nms"})


def test_region_masks_fill_pale_centres_not_concavities():
    """A cell whose pale centre reaches the background through a broken rim gets its centre;
    a crescent keeps its concave side (both are what Otsu's threshold gives on real smears)."""
    from napari_sickle.analysis.smear import region_masks_from_boxes

    yy, xx = np.mgrid[:60, :130]
    r1 = np.hypot(yy - 30, xx - 30)
    ring = (r1 < 20) & (r1 >= 9) & ~((np.abs(yy - 30) < 3) & (xx > 30))  # rim broken by a 5 px gap
    crescent = (np.hypot(yy - 30, xx - 95) < 20) & (np.hypot(yy - 30, xx - 107) >= 17)
    fg = ring | crescent
    boxes = np.array([[10, 10, 51, 51], [75, 10, 116, 51]], np.float32)
    m = region_masks_from_boxes(fg, boxes, np.array([0.9, 0.8], np.float32))
    assert (m[r1 < 9] == 1).all()  # the pale centre is the cell's
    assert (m[ring] == 1).all() and (m[crescent] == 2).all()
    assert m[30, 110] == 0 and (m == 2).sum() == crescent.sum()  # the crescent's concave side stays background
    assert not ((m == 1) & (r1 >= 20)).any()  # nothing grows outside the cell


def test_detect_regions_merges_only_for_detectors_without_their_own_setting():
    """A detector trained on real smears (``region_merge: False``) keeps its boxes: merging by
    connected cell pixels would join a crowded field into one box. Without a setting
    (simulated smears) detections on one connected group of cells become one region."""
    from napari_sickle.analysis.smear import detect_regions

    gray = _three_cells()
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.uint8)
    boxes = np.array([[15, 25, 46, 56], [43, 25, 74, 56], [115, 35, 146, 66]], np.float32)

    class Fake:
        class_names = ["cell region"]

        def __init__(self, merge):
            self.config = {"region_merge": merge}

        def detect(self, image, **kw):
            return boxes.copy(), np.array([0.9, 0.8, 0.7], np.float32), np.ones(3, np.int64)

    kept, _, _ = detect_regions(rgb, Fake(False))
    np.testing.assert_allclose(kept, boxes)
    merged, _, _ = detect_regions(rgb, Fake(None))
    assert len(merged) == 2  # the two touching cells are one region
    np.testing.assert_allclose(merged[0], [15, 25, 74, 56], atol=1)
    assert len(detect_regions(rgb, Fake(None), merge_regions=False)[0]) == 3


def test_detector_validates_on_part_of_train_split():
    from napari_sickle.training.detector import _split_items

    splits = ["train"] * 8 + ["val"] * 4
    tr, va = _split_items(list(range(12)), splits, 0.25, seed=0)
    assert len(va) == 2 and not set(tr) & set(va) and not (set(tr) | set(va)) & {8, 9, 10, 11}
    assert _split_items(list(range(12)), splits, 0.25, seed=0, validate_on="val")[1] == [8, 9, 10, 11]


# ---------------------------------------------------------------------------------- analysis
def test_analyze_small_smear(models, small_smear):
    from napari_sickle.analysis.smear import analyze_smear

    stages = []
    res = analyze_smear(small_smear.image, models, device="cpu", progress=lambda s, d, t: stages.append(s))
    assert {"detect", "classify", "abnormal"} <= set(stages)
    n = len(res)
    assert n > 0
    assert res.probs.shape == (n, 6) and res.labels.shape == (n, 6)
    assert ((res.probs >= 0) & (res.probs <= 1)).all()
    assert np.array_equal(res.labels, (res.probs >= 0.5).astype(int))
    assert res.region_masks.shape == small_smear.image.shape[:2]
    ids = set(np.unique(res.region_masks)) - {0}
    assert ids <= set(range(1, n + 1)) and len(ids) > 0
    # region mask pixels are cells of the simulated truth, mostly
    assert (small_smear.instances[res.region_masks > 0] > 0).mean() > 0.8
    df = res.to_dataframe("smear.png")
    assert list(df.columns[:6]) == ["image", "region_id", "x_min", "y_min", "x_max", "y_max"]
    assert all(t in df.columns and f"p_{t}" in df.columns for t in RBC_TYPES)
    assert len(df) == n and set(df["abnormal"]) <= {0, 1}
    s = res.summary
    assert s["n_regions"] == n and sum(s["counts"].values()) == int(res.labels.sum())
    assert s["scd_call"] in ("positive", "negative", "inconclusive")


def test_scd_rule():
    from napari_sickle.analysis.smear import summarize

    lab = np.zeros((40, 6), int)
    lab[:, 0] = 1
    assert summarize(lab, np.zeros(40, bool))["scd_call"] == "negative"
    lab[:3, 1] = 1
    assert summarize(lab, lab[:, 1] > 0)["scd_call"] == "positive"
    assert summarize(lab[:10], lab[:10, 1] > 0)["scd_call"] == "inconclusive"


def test_scd_call_needs_sure_sickle_calls_and_certain_types():
    """Elongated/Sickle calls under 0.9 do not make a smear positive, and a smear whose type
    calls are uncertain (another lab's camera) gets no call at all, with the reason."""
    from napari_sickle.analysis.smear import TYPE_UNCERTAINTY_MAX, summarize, type_uncertainty

    p = np.zeros((40, 6))
    p[:, 0] = 1.0
    p[:4, 1] = 0.6  # labelled Elongated/Sickle, not surely
    s = summarize(p, np.zeros(40, bool))
    assert s["counts"]["elongated_sickle"] == 4 and s["scd_call"] == "negative"
    assert s["type_uncertainty"] == pytest.approx(4 * 0.4 / 40) and not s["types_uncertain"]
    p[:4, 1] = 0.95
    assert summarize(p, np.zeros(40, bool))["scd_call"] == "positive"
    assert type_uncertainty(np.full((5, 6), 0.5)) == pytest.approx(3.0) and type_uncertainty(np.zeros((0, 6))) == 0
    q = p.copy()
    q[:, 2:] = 0.4  # every region unsure of four types: 4 * 0.4 = 1.6 > TYPE_UNCERTAINTY_MAX
    s = summarize(q, np.zeros(40, bool))
    assert s["type_uncertainty"] > TYPE_UNCERTAINTY_MAX and s["types_uncertain"]
    assert s["scd_call"] == "inconclusive" and "uncertain" in s["scd_reason"]
    assert summarize(p[:10], np.zeros(10, bool))["scd_reason"] == "fewer than 20 regions"
    s = summarize(p, np.zeros(40, bool), lightness_matched=True)  # sure, but only after matching
    assert s["lightness_matched"] and s["scd_call"] == "inconclusive" and "lightness matched" in s["scd_reason"]


def test_bad_inputs(models, small_smear):
    from napari_sickle.analysis.smear import analyze_smear
    from napari_sickle.data.simulate import simulate_smear

    rgb = np.ascontiguousarray(small_smear.image[:160, :240])
    ref = analyze_smear(rgb, models, device="cpu")
    gray = rgb.mean(axis=2).astype(np.uint8)
    assert len(analyze_smear(gray, models, device="cpu")) > 0
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    r_rgba = analyze_smear(rgba, models, device="cpu")
    assert len(r_rgba) == len(ref)
    img16 = rgb.astype(np.uint16) * 257
    r16 = analyze_smear(img16, models, device="cpu")
    assert len(r16) > 0 and r16.region_masks.shape == rgb.shape[:2]
    assert len(analyze_smear(img16.astype(np.float32) / 65535, models, device="cpu")) > 0
    tiny = analyze_smear(rgb[:8, :8], models, device="cpu")
    assert len(tiny) == 0 and tiny.region_masks.shape == (8, 8) and tiny.to_dataframe().empty
    empty = simulate_smear(seed=1, shape=(160, 240), n_cells=0).image  # background and noise, no cell
    r0 = analyze_smear(empty, models, device="cpu")
    assert len(r0) == 0 and r0.summary["n_regions"] == 0 and r0.region_masks.max() == 0
    assert isinstance(r0.to_dataframe(), pd.DataFrame)


def test_wrong_checkpoint_kind(tmp_path, models):
    from napari_sickle.models.checkpoint import CheckpointError, make_checkpoint, save_checkpoint
    from napari_sickle.models.registry import load_models

    from conftest import tiny_rbc_paths

    det_path, clf_path = tiny_rbc_paths()
    with pytest.raises(CheckpointError, match="'detector' model is needed"):
        load_models(detector=clf_path, classifier=clf_path, device="cpu")
    with pytest.raises(CheckpointError, match="'multilabel' model is needed"):
        load_models(detector=det_path, classifier=det_path, device="cpu")
    bm = save_checkpoint(make_checkpoint("bm", "resnet18", {}), tmp_path / "bm.pt")
    with pytest.raises(CheckpointError, match="'bm'"):
        load_models(detector=det_path, classifier=bm, device="cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_models(detector=junk, classifier=clf_path, device="cpu")


def test_missing_weights_message(tmp_path, monkeypatch):
    from napari_sickle.models.backbones import WeightsNotFoundError, resolve_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as ei:
        resolve_weights("resnet50")
    msg = str(ei.value)
    assert "resnet50-0676ba61.pth" in msg and str(tmp_path) in msg


def test_efficientnet_lite0_offline_weights():
    import torch

    from napari_sickle.models.backbones import efficientnet_lite0, efficientnet_lite0_weights_file

    src = torch.load(efficientnet_lite0_weights_file(), weights_only=True)
    m = efficientnet_lite0(pretrained=True)
    assert torch.equal(m.state_dict()["conv_stem.weight"], src["_conv_stem.weight"])


def test_detector_tiling(models):
    """An image much larger than the tile size is tiled; boxes come back in image coordinates."""
    from napari_sickle.data.simulate import simulate_smear
    from napari_sickle.models.detector import _tiles

    tiles = _tiles(1000, 3000, 1024, 128)
    assert len(tiles) == 4 and tiles[-1][3] == 3000 and all(t[0] == 0 and t[2] == 1000 for t in tiles)
    det = models.detector
    sm = simulate_smear(seed=5, shape=(320, 960))
    old = dict(det.config)
    try:
        b_full, _, _ = det.detect(sm.image)
        det.config["tile_size"] = 256  # at scale 0.5 the 480-px-wide input needs 2 tiles
        b_tiled, _, _ = det.detect(sm.image)
    finally:
        det.config.clear()
        det.config.update(old)
    assert len(b_tiled) > 0
    assert b_tiled[:, 2].max() > 600  # boxes from the right-hand tile are shifted back
    assert (b_tiled[:, 0] >= 0).all() and (b_tiled[:, 2] <= 960).all() and (b_tiled[:, 3] <= 320).all()


def test_analyze_cli(tmp_path, models):
    import imageio.v3 as iio

    from napari_sickle.analyze import main
    from napari_sickle.data.simulate import simulate_smear

    img = tmp_path / "in" / "smear.png"
    img.parent.mkdir()
    iio.imwrite(img, simulate_smear(seed=9, shape=(240, 320)).image)
    (tmp_path / "folder").mkdir()
    iio.imwrite(
        tmp_path / "folder" / "gray.tif", simulate_smear(seed=4, shape=(200, 300)).image.mean(axis=2).astype(np.uint8)
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                str(img),
                str(tmp_path / "folder"),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--detector",
                models.detector_path,
                "--classifier",
                models.classifier_path,
            ]
        )
        == 0
    )
    from napari_sickle.io.formats import read_regions_csv

    df = read_regions_csv(out / "smear.png_regions.csv")
    assert len(df) > 0 and all(t in df.columns for t in RBC_TYPES)
    assert (out / "smear.png_overlay.png").is_file() and (out / "gray.tif_overlay.png").is_file()
    summ = pd.read_csv(out / "summary.csv")
    cols = {"n_regions", "abnormal_fraction", "type_uncertainty", "lightness_matched", "scd_call", "scd_reason"}
    assert len(summ) == 2 and cols <= set(summ.columns)


def test_demo_counts_a_cell_found_by_its_own_box_or_its_groups_box(small_smear):
    """The demo's cell figure accepts both region conventions: one box per cell, or one box
    per touching group (the simulator's region truth); nothing found gives 0."""
    from napari_sickle.cli.demo import _cells_found_at_50, _recall_at_50

    cells, regions = small_smear.cells, small_smear.regions
    assert (regions["n_cells"] > 1).any()  # the smear has touching groups
    assert _cells_found_at_50(small_smear, cells) == 1.0
    assert _cells_found_at_50(small_smear, regions) == 1.0
    assert _cells_found_at_50(small_smear, cells.iloc[:0]) == 0.0
    assert _recall_at_50(regions, cells) < 1.0  # per-cell boxes miss the groups' boxes
    half = cells.iloc[: len(cells) // 2]
    assert 0.0 < _cells_found_at_50(small_smear, half) < 1.0
