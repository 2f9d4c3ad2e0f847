"""train_unet: checkpoints, resume, bad input; evaluate on image/mask folders."""

import json

import numpy as np
import pytest


def _tiny(tmp, **kw):
    from napari_sickle.training.unet import train_unet

    from conftest import TINY_UNET

    opts = dict(TINY_UNET, n_simulated=3)
    opts.update(kw)
    return train_unet("simulated", tmp, **opts)


def test_train_unet_writes_checkpoints_and_resumes(tmp_path):
    from napari_sickle.models.checkpoint import load_checkpoint

    logs, prog = [], []
    res = _tiny(tmp_path, epochs=1, log=logs.append, progress=lambda s, d, t: prog.append((s, d, t)))
    assert set(res) >= {"checkpoint", "metrics", "history", "seconds"}
    best = load_checkpoint(res["checkpoint"], kind="unet")
    last = load_checkpoint(tmp_path / "last.pt", kind="unet")
    assert best["config"]["scale"] == 0.5 and best["config"]["class_names"] == ["background", "interior", "boundary"]
    assert best["recipe"]["val_images"] and best["recipe"]["train_images"]
    assert 0.0 <= best["metrics"]["val_dice"] <= 1.0
    assert last["extra"]["epoch"] == 1
    assert logs[0]["event"] == "epoch" and logs[0]["epoch"] == 1 and np.isfinite(logs[0]["loss"])
    json.dumps(logs)  # log records are JSON-serialisable
    assert any(s.startswith("epoch 1/1") for s, _, _ in prog)
    # resume continues from epoch 1 to 2 with the same recipe
    res2 = _tiny(tmp_path, epochs=2, resume=tmp_path / "last.pt")
    assert [h["epoch"] for h in res2["history"]] == [1, 2]
    assert load_checkpoint(tmp_path / "last.pt", kind="unet")["extra"]["epoch"] == 2


def test_train_unet_bad_input(tmp_path):
    from napari_sickle.training.unet import train_unet

    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_unet("simulated", tmp_path, resume=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="backbone"):
        train_unet("simulated", tmp_path, backbone="resnet50")
    with pytest.raises(TypeError, match="unknown U-Net training option"):
        train_unet("simulated", tmp_path, n_epochs=3)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    with pytest.raises(Exception, match="(?i)no|empty|found"):
        train_unet(str(empty), tmp_path / "out", epochs=1)


def test_train_on_image_mask_folder_and_evaluate(tmp_path):
    """images/ + masks/ (RGB 0/255 masks) as BBBC041 stores them; evaluate reads the same layout."""
    import imageio.v3 as iio

    from napari_sickle.analysis.segmentation import evaluate_segmentation
    from napari_sickle.data.simulate import simulate_smear
    from napari_sickle.training.unet import train_unet

    root = tmp_path / "pairs"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k in range(3):
        sm = simulate_smear(seed=20 + k, shape=(160, 200))
        iio.imwrite(root / "images" / f"s{k}.png", sm.image)
        m = (sm.instances > 0).astype(np.uint8) * 255
        iio.imwrite(root / "masks" / f"s{k}.png", np.dstack([m, m, m]))
    res = train_unet(
        str(root),
        tmp_path / "out",
        epochs=1,
        device="cpu",
        steps_per_epoch=1,
        batch_size=2,
        crop=64,
        scale=0.5,
        base_channels=8,
        depth=2,
        holdout=1,
    )
    from napari_sickle.models.checkpoint import load_checkpoint

    ck = load_checkpoint(res["checkpoint"], kind="unet")
    assert len(ck["recipe"]["test_images"]) == 1
    assert not set(ck["recipe"]["test_images"]) & set(ck["recipe"]["train_images"] + ck["recipe"]["val_images"])
    out = evaluate_segmentation(
        str(root), unet_model=res["checkpoint"], device="cpu", images=ck["recipe"]["test_images"]
    )
    assert out["n_images"] == 1
    for m in ("watershed", "unet", "connected_components"):
        assert 0.0 <= out[m]["dice"] <= 1.0 and "instance_f1_50" in out[m] and "count_error" in out[m]


def test_unannotated_border_cells_are_ignored_in_the_loss():
    """A cut cell at the border missing from the mask becomes IGNORE, not background;
    the border rule is fitted from annotated vs omitted border cells."""
    from napari_sickle.training.unet import IGNORE, _prepare, border_objects, fit_border_fraction

    shape = (160, 240)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 220.0)
    gt = np.zeros(shape, np.int32)
    cells = [(80, 60, True), (80, 150, True), (5, 200, False), (150, 100, True)]  # (cy, cx, annotated)
    for k, (cy, cx, annotated) in enumerate(cells, start=1):
        d = (yy - cy) ** 2 + (xx - cx) ** 2 <= 22**2
        img[d] = 90
        if annotated:
            gt[d] = k
    img = np.clip(img + np.random.default_rng(0).normal(0, 3, shape), 0, 255).astype(np.uint8)
    ignore, records = border_objects(img, gt)
    assert ignore[5, 200] and not ignore[80, 60] and not ignore[40, 20]
    assert sorted(a for _, a in records) == [False, True]  # the cut top cell and the annotated bottom one
    x, t = _prepare(img, gt, 0.5, ignore)
    assert x.shape == (3, 80, 120) and t[2, 100] == IGNORE and t[40, 30] == 1 and t[40, 5] == 0
    assert 0.0 < fit_border_fraction(records) <= max(r for r, a in records if a)
    assert fit_border_fraction([]) == 0.0
    _, _, X, annotated = border_objects(img, gt, with_features=True)
    assert X.shape == (2, 3) and sorted(annotated) == [False, True]
    assert X[annotated][0, 1] > X[~annotated][0, 1]  # the annotated cell reaches deeper into the image


def test_fit_border_classifier_learns_depth_rule():
    from napari_sickle.training.unet import border_rule_mode, fit_border_classifier

    rng = np.random.default_rng(0)
    X = np.column_stack([rng.uniform(0.2, 1.2, 200), rng.uniform(0, 2, 200), rng.uniform(0, 1, 200)])
    y = X[:, 1] > 1.0
    fit = fit_border_classifier(X, y)
    assert fit["train_accuracy"] > 0.9 and fit["coef"][1] > abs(fit["coef"][0]) and fit["coef"][1] > abs(fit["coef"][2])
    assert fit_border_classifier(X, np.ones(200, bool)) is None  # one class only: nothing to fit
    assert border_rule_mode(True) == "logistic" and border_rule_mode(False) == "none"
    with pytest.raises(ValueError, match="border_rule must be one of"):
        border_rule_mode("area")
