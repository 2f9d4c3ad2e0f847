"""`python -m napari_sickle.evaluate`: one JSON object per call, the contract's keys, clear
errors for a missing or wrong model."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_sickle.cli.evaluate import main
from napari_sickle.constants import RBC_TYPES


def _write_png(path: Path, arr) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, arr)


@pytest.fixture(scope="module")
def tiny_multilabel(tmp_path_factory):
    """Class folders of discs / elongated cells and a multilabel model whose heads are fitted
    on them (built from the RBC training pieces: the evaluation, not the training, is under test)."""
    from napari_sickle.models.checkpoint import save_checkpoint
    from napari_sickle.models.multilabel import new_classifier
    from napari_sickle.training.multilabel import _train_heads, compute_features, load_patches

    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:24, :24] - 11.5
    for folder, (a, b) in (("Discocytes", (8, 8)), ("Elongated", (10, 4))):
        for i in range(5):
            img = np.full((24, 24), 200, np.uint8)
            img[(xx / a) ** 2 + (yy / b) ** 2 <= 1] = 80
            _write_png(
                root / "crops" / folder / f"P{i}_{i}.png",
                np.clip(img + rng.integers(-8, 8, img.shape), 0, 255).astype(np.uint8),
            )
    (root / "crops" / "Elongated" / "empty.png").write_bytes(b"")
    clf = new_classifier("efficientnet-lite0", input_size=32, pretrained=False)
    ps = load_patches(str(root / "crops"))
    X = compute_features(clf, ps)
    _train_heads(clf.net.heads, X, ps.Y, X, ps.Y, epochs=30, lr=1e-3, batch_size=16, seed=0)
    return root / "crops", save_checkpoint(clf.to_checkpoint(), root / "model.pt")


def test_multilabel_prints_contract_json(tiny_multilabel, capsys):
    crops, model = tiny_multilabel
    assert main(["multilabel", "--model", str(model), "--data", str(crops), "--threads", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    res = json.loads(out[0])
    assert {"auc", "mean_auc", "exact_match_accuracy", "abnormal_accuracy", "n"} <= set(res)
    assert res["n"] == 10  # the zero-byte file is skipped, not fatal
    assert set(res["auc"]) == set(RBC_TYPES)
    assert res["auc"]["reticulocyte"] is None  # no positives: no AUC, not a made-up number
    assert res["mean_auc"] > 0.9  # the heads fitted these two shapes apart
    assert 0.0 <= res["exact_match_accuracy"] <= 1.0


@pytest.mark.parametrize("kind", ["detector", "bm"])
def test_wrong_model_kind_is_a_clear_error(kind, tiny_multilabel, capsys):
    crops, model = tiny_multilabel
    assert main([kind, "--model", str(model), "--data", str(crops)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'multilabel' model" in err and f"'{kind}' model is needed" in err


def test_missing_model_file(tmp_path, capsys):
    assert main(["multilabel", "--model", str(tmp_path / "nope.pt"), "--data", "simulated"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --model {tmp_path / 'nope.pt'}: no such checkpoint file."


def test_segmentation_without_model_in_a_real_process(tmp_path):
    """Watershed vs connected components on an images/+masks/ folder of two touching discs."""
    yy, xx = np.mgrid[:64, :96]
    mask = ((yy - 32) ** 2 + (xx - 30) ** 2 < 15**2) | ((yy - 32) ** 2 + (xx - 58) ** 2 < 15**2)
    img = np.where(mask, 90, 210).astype(np.uint8)
    _write_png(tmp_path / "data" / "images" / "a.png", np.stack([img] * 3, -1))
    _write_png(tmp_path / "data" / "masks" / "a.png", (mask * 255).astype(np.uint8))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_sickle.evaluate",
            "segmentation",
            "--data",
            str(tmp_path / "data"),
            "-o",
            "gt_min_size=5",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    for method in ("watershed", "connected_components"):
        assert {"dice", "iou", "instance_f1_50", "count_error"} <= set(res[method])
        assert res[method]["dice"] > 0.9  # both find the foreground
    assert "unet" not in res
