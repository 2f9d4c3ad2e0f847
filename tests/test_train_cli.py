"""`python -m napari_sickle.train`: real trainers on tiny data, JSON progress, resume and
clear one-line errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_sickle.cli.train import main
from napari_sickle.constants import RBC_TYPES

TINY_ML = ["--threads", "1", "--input-size", "32", "--batch-size", "16", "-o", "pretrained=False", "-o", "compose=4"]


def _write_png(path: Path, arr) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, arr)


def _cell(rng, elongated: bool) -> np.ndarray:
    """A 24x24 grey crop: a dark disc or a dark elongated ellipse on a light background."""
    yy, xx = np.mgrid[:24, :24] - 11.5
    a, b = (10, 4) if elongated else (8, 8)
    inside = (xx / a) ** 2 + (yy / b) ** 2 <= 1
    img = np.full((24, 24), 200, np.uint8)
    img[inside] = 90
    return np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def crops_root(tmp_path_factory) -> Path:
    """Class folders named as in Xu et al. 2017, 6 crops each, plus one unreadable file."""
    root = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(0)
    for folder, elong in (("Discocytes", False), ("Elongated", True)):
        for i in range(6):
            _write_png(root / folder / f"P{i % 2}_{i}.png", _cell(rng, elong))
    (root / "Discocytes" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


def _run_json(argv, capsys):
    code = main(argv + ["--json-progress"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    events = [json.loads(ln) for ln in lines]  # every line is one JSON object
    return code, events


def test_train_terminal_then_resume_with_json_progress(crops_root, tmp_path, capsys):
    """A real multilabel training run in a subprocess (terminal mode), then --resume with JSON lines."""
    from napari_sickle.models.checkpoint import load_checkpoint

    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_sickle.train",
            "multilabel",
            "--data",
            str(crops_root),
            "--out",
            str(out),
            "--epochs",
            "1",
            *TINY_ML,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(result["checkpoint"]) == out / "best.pt"
    assert result["skipped"] == 1  # the unreadable file is skipped and counted, not fatal
    assert "epoch 1/1" in proc.stderr and "1 unreadable image" in proc.stderr
    assert load_checkpoint(out / "last.pt", kind="multilabel")["extra"]["epoch"] == 0

    code, events = _run_json(
        [
            "multilabel",
            "--data",
            str(crops_root),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--resume",
            str(out / "last.pt"),
            *TINY_ML,
        ],
        capsys,
    )
    assert code == 0, events[-1]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert {"step", "epoch", "checkpoint", "warning"} <= set(kinds)
    assert events[0]["resume"] == str(out / "last.pt")
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [2]  # continues after the stored epoch
    assert all(isinstance(e["loss"], float) and e["metric_name"] for e in epochs)
    assert [e for e in events if e["event"] == "warning"][0]["skipped"] == 1
    ckpt_events = [e for e in events if e["event"] == "checkpoint"]
    # last.pt is rewritten every epoch (best.pt only when the validation metric improves)
    assert "last.pt" in {Path(e["path"]).name for e in ckpt_events}
    ck = load_checkpoint(out / "last.pt", kind="multilabel")
    assert ck["extra"]["epoch"] == 1 and ck["config"]["input_size"] == 32
    assert Path(events[-1]["checkpoint"]).is_file()


@pytest.mark.parametrize("case", ["empty", "one_image", "missing_column", "missing_resume", "no_such_data"])
def test_clear_errors(case, crops_root, tmp_path, capsys):
    data = tmp_path / "data"
    extra = []
    if case == "empty":
        data.mkdir()
        expect = "empty"
    elif case == "one_image":
        _write_png(data / "Discocytes" / "a.png", np.zeros((8, 8), np.uint8))
        _write_png(data / "Discocytes" / "b.png", np.zeros((8, 8), np.uint8))
        _write_png(data / "Echinocytes" / "c.png", np.zeros((8, 8), np.uint8))
        expect = "'Echinocytes' has only one image"
    elif case == "missing_column":
        _write_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
        data = tmp_path / "table.csv"
        cols = [t for t in RBC_TYPES if t != "granular"]
        data.write_text("path," + ",".join(cols) + "\na.png," + ",".join("0" for _ in cols) + "\n")
        expect = "granular"
    elif case == "missing_resume":
        data = crops_root
        extra = ["--resume", str(tmp_path / "nope" / "last.pt")]
        expect = "no such checkpoint"
    else:
        expect = "no such file or folder"
    code = main(["multilabel", "--data", str(data), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert expect in err
    assert not (tmp_path / "out" / "last.pt").exists()


def test_error_in_a_real_process_has_no_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_sickle.train",
            "detector",
            "--data",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: --data {tmp_path / 'empty'}: the folder is empty."


def test_json_error_event(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, events = _run_json(["bm", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert events == [
        {"event": "error", "message": f"--data {tmp_path / 'empty'}: the folder is empty.", "type": "UsageError"}
    ]


def test_unknown_option_value_parsing():
    from napari_sickle.cli.train import build_kwargs, build_parser

    args = build_parser().parse_args(
        ["unet", "--data", "simulated", "--out", "x", "-o", "base=8", "-o", "augment=false", "--lr", "0.01"]
    )
    kw = build_kwargs(args, None, None)
    assert kw["base"] == 8 and kw["augment"] is False and kw["lr"] == 0.01 and kw["resume"] is None


def test_multilabel_default_composes_patches_from_training_crops_only(crops_root, tmp_path, monkeypatch):
    """On class folders, `train multilabel` composes multi-cell patches by default: training
    patches from training crops, validation patches from validation crops, never mixed."""
    import napari_sickle.data.compose as compose
    import napari_sickle.training.multilabel as ml
    from napari_sickle.models.checkpoint import load_checkpoint

    used = []
    real = compose.compose_patches

    def spy(crops, n, *a, **k):
        used.append(({c.path for c in crops}, n, k.get("min_cells")))
        return real(crops, n, *a, **k)

    monkeypatch.setattr(compose, "compose_patches", spy)
    monkeypatch.setattr(ml, "DEFAULT_COMPOSE", 10)  # the default (1,500) with 10 patches for speed
    logs = []
    r = ml.train_multilabel(
        str(crops_root), tmp_path / "run", epochs=2, input_size=32, batch_size=16, pretrained=False, log=logs.append
    )
    (train_paths, n_train, min_cells), (val_paths, n_val, _) = used
    assert (n_train, n_val, min_cells) == (10, 2, 2)
    assert train_paths and val_paths and not train_paths & val_paths
    ck = load_checkpoint(r["checkpoint"], kind="multilabel")
    assert ck["recipe"]["composed_patches"] == {"train": 10, "val": 2}
    assert ck["config"]["pool"] == "avgmax-s4" and ck["config"]["crop"] == "pad"
    assert ck["config"]["tta"] == "d4" and ck["recipe"]["tta"] == "d4"  # the eight canvas symmetries by default
    epochs = [e for e in logs if e.get("event") == "epoch"]
    assert epochs[0]["metric_name"] == "val_exact_match"
    assert 0 <= epochs[0]["multi_exact_match_accuracy"] <= 1 and 0 <= epochs[0]["single_exact_match_accuracy"] <= 1
    assert r["metrics"]["val"]["n"] == 3 + 2  # 3 validation crops (20 % of 12) + 2 validation patches


def test_table1_protocol_on_tiny_crops(crops_root, tmp_path, capsys):
    """Models A, A* and B with 2-fold CV on composed patches; writes protocol.json + table1.md."""
    out = tmp_path / "protocol"
    code, events = _run_json(
        [
            "multilabel-protocol",
            "--data",
            str(crops_root),
            "--out",
            str(out),
            "--folds",
            "2",
            "--epochs",
            "3",
            "--threads",
            "1",
            "--input-size",
            "32",
            "-o",
            "n_train_patches=8",
            "-o",
            "n_test_patches=4",
        ],
        capsys,
    )
    assert code == 0, events[-1]
    assert [e["fold"] for e in events if e["event"] == "fold"] == [1, 2]
    rep = json.loads((out / "protocol.json").read_text())
    assert rep["folds"] == 2 and len(rep["per_fold"]) == 2
    assert rep["summary"]["A/single"]["n"] == 12  # every readable crop is tested once (broken file skipped)
    assert rep["summary"]["A/multi"]["n"] == 8
    table = (out / "table1.md").read_text()
    assert "Model A*" in table and "Model B" in table
    m = events[-1]["metrics"]
    assert 0 <= m["A*_single_exact_match"] <= 1 and 0 <= m["A_mixed_abnormal_accuracy"] <= 1


def test_composed_data_option_and_patient_split(tmp_path):
    """``--data composed:<crops>`` is accepted for an existing folder, refused (one-line
    UsageError) for a missing one, and the held-out composed smears use another patient's crops."""
    from types import SimpleNamespace

    from napari_sickle.cli._common import UsageError, check_data
    from napari_sickle.training.detector import split_crops

    check_data(f"composed:{tmp_path}", "detector")
    check_data(f"composed-test:{tmp_path}", "eval")
    with pytest.raises(UsageError, match="no such folder"):
        check_data(f"composed:{tmp_path / 'missing'}", "detector")
    crops = [SimpleNamespace(path=f"/x/Oval/{p}_Im{i}_sub.png") for p in ("P1", "P2", "P3") for i in range(4)]
    train, test = split_crops(crops)
    assert {c.path.split("/")[-1].split("_")[0] for c in test} == {"P2"}
    assert len(train) == 8 and not {id(c) for c in train} & {id(c) for c in test}
    one = [SimpleNamespace(path=f"/x/Oval/cell{i:02d}.png") for i in range(10)]
    train, test = split_crops(one)
    assert len(test) == 2 and len(train) == 8
