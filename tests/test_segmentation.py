"""Watershed / connected components / tiled U-Net segmentation, comparison and bad input."""

import numpy as np
import pytest

from napari_sickle.analysis.segmentation import (
    compare_segmentations,
    predict_unet_probabilities,
    segment_connected_components,
    segment_unet,
    segment_watershed,
)


def two_touching_cells(shape=(120, 200), dtype=np.uint8):
    """Bright background, two dark overlapping disks (radius 25) and one lone disk."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 220.0)
    gt = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate([(60, 50), (60, 92), (60, 160)], start=1):
        d = (yy - cy) ** 2 + (xx - cx) ** 2 <= 25**2
        img[d] = 90
        gt[d & (gt == 0)] = k
    rng = np.random.default_rng(0)
    img = np.clip(img + rng.normal(0, 3, shape), 0, 255)
    if dtype == np.uint16:
        return (img * 257).astype(np.uint16), gt
    return img.astype(np.uint8), gt


def test_watershed_splits_touching_cells_connected_components_merges():
    img, gt = two_touching_cells()
    ws = segment_watershed(img)
    cc = segment_connected_components(img)
    assert ws.dtype == np.int32 and ws.shape == img.shape
    assert ws.max() == 3
    assert cc.max() == 2  # the touching pair stays one object
    res = compare_segmentations(img, gt, methods=["watershed", "connected_components"])
    assert res.metrics["watershed"].instance_f1_50 == pytest.approx(1.0)
    assert res.metrics["watershed"].merges == 0
    assert res.metrics["connected_components"].merges == 1
    assert res.metrics["connected_components"].merged_cells == 2
    assert res.merged["connected_components"].max() > 0 and res.merged["watershed"].max() == 0
    table = res.metrics_table()
    assert list(table["method"]) == ["watershed", "connected_components"]
    assert {"dice", "iou", "f1_50", "count", "merges", "splits"} <= set(table.columns)


def test_simulated_smear_with_touching_cells(sim_small):
    res = compare_segmentations(sim_small.image, sim_small.instances)
    ws, cc = res.metrics["watershed"], res.metrics["connected_components"]
    assert ws.count_true == int(sim_small.instances.max())
    assert ws.dice > 0.9
    assert ws.instance_f1_50 > cc.instance_f1_50
    assert cc.merges >= 1  # the simulated smear has touching cells
    assert ws.merges < cc.merges


def test_image_without_cells_gives_no_objects():
    rng = np.random.default_rng(1)
    blank = np.clip(rng.normal(215, 2, (150, 180, 3)), 0, 255).astype(np.uint8)
    assert segment_watershed(blank).max() == 0
    assert segment_connected_components(blank).max() == 0
    res = compare_segmentations(blank, np.zeros((150, 180), np.uint8))
    m = res.metrics["watershed"]
    assert m.count_pred == 0 and m.count_true == 0 and m.dice == 1.0
    assert segment_watershed(np.zeros((50, 60), np.uint8)).max() == 0  # flat image


def test_ground_truth_of_another_size_is_a_clear_error():
    img, gt = two_touching_cells()
    with pytest.raises(ValueError, match=r"200x120.*same size"):
        compare_segmentations(img, gt[:, :150])


def test_16_bit_and_rgba_images_give_the_same_result():
    img8, gt = two_touching_cells()
    img16, _ = two_touching_cells(dtype=np.uint16)
    ref = segment_watershed(img8)
    assert np.array_equal(segment_watershed(img16) > 0, ref > 0)
    assert segment_watershed(img16).max() == ref.max()
    rgba = np.dstack([img8, img8, img8, np.full_like(img8, 255)])
    assert np.array_equal(segment_watershed(rgba), ref)
    res = compare_segmentations(rgba, gt)
    assert res.metrics["watershed"].instance_f1_50 == pytest.approx(1.0)


def test_unknown_method_and_missing_unet_model():
    img, _ = two_touching_cells()
    with pytest.raises(ValueError, match="unknown method"):
        compare_segmentations(img, methods=["snakes"])
    with pytest.raises(ValueError, match="U-Net"):
        compare_segmentations(img, methods=["unet"])


def test_tiled_unet_inference_matches_one_big_tile(tiny_unet):
    """Overlapping tiles blended linearly give nearly the same probabilities as one tile."""
    from napari_sickle.models.unet import load_unet

    net, cfg = load_unet(tiny_unet)
    img, _ = two_touching_cells(shape=(200, 300))
    whole = predict_unet_probabilities(img, (net, cfg), tile=1024, overlap=0, device="cpu")
    calls = []
    tiled = predict_unet_probabilities(
        img, (net, cfg), tile=64, overlap=16, device="cpu", progress=lambda s, d, t: calls.append((d, t))
    )
    assert whole.shape == tiled.shape == (3, 200, 300)
    assert np.allclose(tiled.sum(0), 1.0, atol=1e-4)
    assert calls[-1][0] == calls[-1][1] > 4  # several tiles, progress reported for each
    assert np.abs(whole - tiled).mean() < 0.05


def test_segment_unet_returns_instances(tiny_unet, sim_small):
    lab = segment_unet(sim_small.image, tiny_unet, device="cpu")
    assert lab.shape == sim_small.instances.shape and lab.dtype == np.int32
    res = compare_segmentations(
        sim_small.image, sim_small.instances, methods=["unet", "watershed"], unet_model=tiny_unet, device="cpu"
    )
    assert set(res.labels) == {"unet", "watershed"}
    assert 0.0 <= res.metrics["unet"].dice <= 1.0


def test_evaluate_segmentation_on_bbbc041_fixture(fixtures_dir):
    from napari_sickle.analysis.segmentation import evaluate_segmentation

    out = evaluate_segmentation(fixtures_dir / "bbbc041seg")
    assert out["n_images"] == 2
    for m in ("watershed", "connected_components"):
        assert set(out[m]) >= {"dice", "iou", "instance_f1_50", "count_error"}
        assert 0.8 < out[m]["dice"] <= 1.0
    # splitting touching cells is what watershed is for
    assert out["watershed"]["instance_f1_50"] > out["connected_components"]["instance_f1_50"]


def test_watershed_at_half_resolution_matches_full_resolution(sim_small):
    """work_factor=2 (the fast path) finds the same cells with full-resolution outlines."""
    from napari_sickle.analysis.seg_metrics import segmentation_metrics

    full = segment_watershed(sim_small.image, work_factor=1)
    half = segment_watershed(sim_small.image, work_factor=2)
    assert half.shape == full.shape and half.dtype == np.int32
    m = segmentation_metrics(half, full)
    assert m.dice > 0.99 and m.instance_f1_50 > 0.95
    # the outline follows the full-resolution threshold: no object pixel outside it
    from napari_sickle.analysis.segmentation import foreground_mask

    assert not (half > 0)[~foreground_mask(sim_small.image)].any()


def test_small_border_objects_are_dropped():
    """Mostly cut-off cells at the image border go; big border cells and inner cells stay."""
    from napari_sickle.analysis.segmentation import drop_small_border_objects, unet_probabilities_to_instances

    lab = np.zeros((100, 160), np.int32)
    lab[40:60, 40:60] = 1  # inner, 400 px
    lab[40:60, 80:100] = 2  # inner, 400 px
    lab[0:5, 120:140] = 3  # border, 100 px = 0.25 of typical
    lab[80:100, 0:18] = 4  # border, 360 px = 0.9 of typical
    out = drop_small_border_objects(lab, 0.5)
    assert set(np.unique(out)) == {0, 1, 2, 4}
    assert np.array_equal(drop_small_border_objects(lab, 0.0), lab)
    # the same rule inside the U-Net post-processing
    probs = np.zeros((3,) + lab.shape, np.float32)
    probs[0] = lab == 0
    probs[1] = lab > 0
    inst = unet_probabilities_to_instances(probs, min_size=10, seeds="components", border_min_fraction=0.5)
    assert inst.max() == 3 and not inst[0:5, 120:140].any()


def test_fill_mask_holes_equals_scipy():
    from scipy import ndimage as ndi

    from napari_sickle.analysis.segmentation import fill_mask_holes

    rng = np.random.default_rng(1)
    for _ in range(5):
        m = ndi.binary_opening(rng.random((67, 91)) < 0.55)
        assert np.array_equal(fill_mask_holes(m), ndi.binary_fill_holes(m))
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False  # a hole
    assert fill_mask_holes(ring)[4, 4] and not fill_mask_holes(ring)[0, 0]


def test_unet_test_time_augmentation_makes_predictions_flip_and_rotation_equivariant():
    """With TTA the probabilities of a flipped/rotated image are the flipped/rotated
    probabilities (any network); without it a random U-Net is not equivariant."""
    import torch

    from napari_sickle.analysis.segmentation import unet_tta_mode
    from napari_sickle.models.unet import build_unet

    torch.manual_seed(0)
    cfg = {"depth": 2, "base_channels": 4, "scale": 1.0}
    net = build_unet(cfg).eval()
    img = (np.random.default_rng(1).random((32, 48, 3)) * 255).astype(np.uint8)

    def probs(im, tta):
        return predict_unet_probabilities(im, (net, cfg), device="cpu", tta=tta)

    lr = lambda a: a[..., ::-1]  # noqa: E731 - works for (H, W, C) images and (3, H, W) maps alike
    plain = np.abs(probs(img[:, ::-1], "none") - lr(probs(img, "none"))).max()
    flips = np.abs(probs(img[:, ::-1], "flips") - lr(probs(img, "flips"))).max()
    assert plain > 1e-3 and flips < 1e-5
    ud = np.abs(probs(img[::-1], "d4") - probs(img, "d4")[:, ::-1]).max()
    sq = img[:, :32]
    rot = np.abs(probs(np.rot90(sq), "d4") - np.rot90(probs(sq, "d4"), axes=(1, 2))).max()
    assert ud < 1e-5 and rot < 1e-5
    assert np.allclose(probs(img, "d4").sum(0), 1.0, atol=1e-5)
    assert unet_tta_mode(None) == "none" and unet_tta_mode(True) == "d4"
    with pytest.raises(ValueError, match="tta must be one of"):
        unet_tta_mode("rot")


def test_border_features_and_logistic_border_rule():
    """Features of border objects (size, depth into the image, edge length, all relative to the
    typical inner object) and the logistic rule that drops the ones predicted left out."""
    from napari_sickle.analysis.segmentation import (
        border_features,
        drop_border_objects_by_classifier,
        unet_probabilities_to_instances,
    )

    lab = np.zeros((100, 160), np.int32)
    lab[40:60, 40:60] = 1  # inner, 400 px
    lab[40:60, 80:100] = 2  # inner, 400 px
    lab[0:5, 120:140] = 3  # border: shallow sliver, long edge contact
    lab[80:100, 0:18] = 4  # border, in the corner: 18 px deep, 20 + 18 px on the edges
    ids, X = border_features(lab)
    diam = 2 * np.sqrt(400 / np.pi)
    assert list(ids) == [3, 4]
    assert np.allclose(X[0], [100 / 400, 5 / diam, 20 / diam])
    assert np.allclose(X[1], [360 / 400, 18 / diam, 38 / diam])
    deep = {"coef": [0.0, 1.0, 0.0], "intercept": -0.5}  # keep when depth > half a typical diameter
    assert set(np.unique(drop_border_objects_by_classifier(lab, deep))) == {0, 1, 2, 4}
    keep_all = {"coef": [0.0, 0.0, 0.0], "intercept": 1.0}
    assert np.array_equal(drop_border_objects_by_classifier(lab, keep_all), lab)
    probs = np.zeros((3,) + lab.shape, np.float32)
    probs[0] = lab == 0
    probs[1] = lab > 0
    inst = unet_probabilities_to_instances(probs, min_size=10, seeds="components", border_classifier=deep)
    assert inst.max() == 3 and not inst[0:5, 120:140].any() and inst[90, 5] > 0
    assert border_features(np.zeros((5, 5), np.int32))[1].shape == (0, 3)
