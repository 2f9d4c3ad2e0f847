"""Reliability and security of checkpoints, batch outputs, writers and the command lines
(docs/reliability.md): one test per problem of the bad-input matrix."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SHAPE = (240, 360)


def _tiny_paths():
    from conftest import tiny_rbc_paths

    return tiny_rbc_paths()


def _models_args() -> list[str]:
    det, clf = _tiny_paths()
    return [
        "--detector",
        str(det),
        "--classifier",
        str(clf),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--processes",
        "1",
        "--threads",
        "1",
    ]


def _smear(path: Path, seed: int) -> Path:
    import imageio.v3 as iio

    from napari_sickle.data.simulate import simulate_smear

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, simulate_smear(seed=seed, shape=SHAPE).image)
    return path


def _analyze(capsys, *argv) -> tuple[int, str, str]:
    import torch

    from napari_sickle.cli.analyze import main

    threads = torch.get_num_threads()
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _last_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    line = _last_line(err)
    assert line.startswith("error: "), err
    return line


@pytest.fixture(autouse=True)
def _umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# ------------------------------------------------------------------ 1. code in checkpoints
def _evil_blob(marker_dir: Path) -> bytes:
    """A skops pipeline whose last transformer is ``subprocess.check_output`` under the name
    ``sklearn.utils._testing.check_output``: predicting runs ``touch touch ...`` in ``marker_dir``."""
    import skops.io as sio
    from sklearn.dummy import DummyClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.utils._testing import check_output

    x = np.random.default_rng(0).random((10, 6))
    pipe = Pipeline(
        [
            ("a", FunctionTransformer(np.full_like, kw_args={"fill_value": "touch", "dtype": "<U5"})),
            ("b", FunctionTransformer(np.ravel)),
            ("c", FunctionTransformer(check_output, kw_args={"cwd": str(marker_dir)})),
            ("clf", DummyClassifier().fit(x, np.arange(10) % 2)),
        ]
    )
    blob = sio.dumps(pipe)
    src, buf = zipfile.ZipFile(io.BytesIO(blob)), io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "schema.json":
                data = data.replace(b'"__module__": "subprocess"', b'"__module__": "sklearn.utils._testing"')
            dst.writestr(name, data)
    return buf.getvalue()


def test_crafted_classifier_blob_is_refused_and_runs_no_code(tmp_path, capsys):
    import torch

    from napari_sickle.models.checkpoint import CheckpointError, sklearn_from_bytes
    from napari_sickle.models.multilabel import RBCClassifier

    marks = tmp_path / "marks"
    marks.mkdir()
    evil = _evil_blob(marks)
    probs = np.random.default_rng(1).random((3, 6))
    try:
        sklearn_from_bytes(evil).predict_proba(probs)  # the old prefix rule let this through
    except CheckpointError as exc:
        assert "sklearn.utils._testing.check_output" in str(exc)
    assert list(marks.iterdir()) == []

    _, clf = _tiny_paths()
    ckpt = torch.load(clf, weights_only=True)
    ckpt["extra"]["abnormal_model_skops"] = evil
    bad = tmp_path / "evil.pt"
    torch.save(ckpt, bad)
    try:
        RBCClassifier.from_checkpoint(bad).abnormal_proba(probs)
    except CheckpointError as exc:
        assert str(bad) in str(exc) and "check_output" in str(exc) and "\n" not in str(exc)
    assert list(marks.iterdir()) == []

    img = _smear(tmp_path / "in" / "a.png", 1)
    args = [a if a != str(clf) else str(bad) for a in _models_args()]
    rc, _, err = _analyze(capsys, img, "--out", tmp_path / "out", *args)
    assert rc == 2 and str(bad) in _one_line_error(err)
    assert list(marks.iterdir()) == []


def test_project_classifiers_round_trip():
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import GradientBoostingClassifier

    from napari_sickle.models.checkpoint import sklearn_from_bytes, sklearn_to_bytes

    x = np.random.default_rng(0).random((60, 6))
    y = (x[:, 0] > 0.5).astype(int)
    for model in (
        GradientBoostingClassifier(n_estimators=5, max_depth=2, random_state=0).fit(x, y),
        GradientBoostingClassifier(n_estimators=3, subsample=0.5, random_state=1).fit(x, y),
        DummyClassifier(strategy="most_frequent").fit(x, np.zeros(60, int)),
    ):
        back = sklearn_from_bytes(sklearn_to_bytes(model))
        np.testing.assert_array_equal(back.predict_proba(x), model.predict_proba(x))


# ------------------------------------------------------------------ 2. same stem, two inputs
def test_same_stem_different_extension_get_separate_results(tmp_path, capsys):
    d = tmp_path / "in"
    _smear(d / "x.png", 1)
    _smear(d / "x.jpg", 2)
    out = tmp_path / "out"
    rc, stdout, err = _analyze(capsys, d, "--out", out, *_models_args())
    assert rc == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["analyzed"] == 2
    for name in ("x.png", "x.jpg"):
        assert (out / f"{name}_regions.csv").is_file() and (out / f"{name}_overlay.png").is_file()
        assert set(pd.read_csv(out / f"{name}_regions.csv")["image"]) <= {name}
    summ = pd.read_csv(out / "summary.csv")
    assert sorted(summ["image"]) == sorted([str(d / "x.jpg"), str(d / "x.png")])

    _smear(tmp_path / "other" / "x.png", 3)  # same file name in another folder: refused, not overwritten
    rc, _, err = _analyze(
        capsys, d / "x.png", tmp_path / "other" / "x.png", "--out", tmp_path / "out2", *_models_args()
    )
    assert rc == 2 and "same file name" in _one_line_error(err)


# ------------------------------------------------------------------ 3. output inside the input
def test_batch_never_reads_its_own_outputs(tmp_path, capsys):
    d = tmp_path / "in"
    img = _smear(d / "a.png", 1)
    out = d / "out"
    rc, _, err = _analyze(capsys, img, "--out", out, *_models_args())
    assert rc == 0, err
    # like 'analyze in/* --out in/out' once in/out exists: the overlays there are not smears
    rc, stdout, err = _analyze(capsys, img, out, "--out", out, *_models_args())
    assert rc == 0, err
    rep = json.loads(stdout.strip().splitlines()[-1])
    assert rep["images"] == 1 and rep["analyzed"] == 0 and rep["skipped_done"] == 1
    assert list(pd.read_csv(out / "summary.csv")["image"]) == [str(img)]
    assert not list(out.glob("*overlay.png_*"))

    rc, _, err = _analyze(capsys, d, "--out", d, *_models_args())  # results into the smears' folder
    assert rc == 2 and "input folder" in _one_line_error(err)


# ------------------------------------------------------------------ 4. npe2 writers
def _full_disk(write):
    def failing(*args, **kwargs):
        target = next(a for a in (*args, *kwargs.values()) if isinstance(a, (str, os.PathLike)) or hasattr(a, "write"))
        if hasattr(target, "write"):
            target.write(b"partial" if "b" in getattr(target, "mode", "b") else "partial")
        else:
            Path(target).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    return failing


def test_npe2_writers_leave_nothing_behind_on_a_full_disk(tmp_path, monkeypatch):
    import PIL.Image
    import tifffile

    from napari_sickle.plugin._writer import write_labels, write_regions_csv

    labels = np.zeros((20, 30), np.uint16)
    labels[2:8, 3:9] = 1
    boxes = np.array([[[2, 3], [2, 9], [8, 9], [8, 3]]], float)
    cases = [
        ("labels.png", lambda p: write_labels(str(p), labels, {}), (PIL.Image.Image, "save")),
        ("labels.tif", lambda p: write_labels(str(p), labels, {}), (tifffile, "imwrite")),
        ("regions.csv", lambda p: write_regions_csv(str(p), boxes, {"name": "smear"}), (pd.DataFrame, "to_csv")),
    ]
    for name, write, (owner, attr) in cases:
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        with monkeypatch.context() as m:
            original = getattr(owner, attr)
            m.setattr(owner, attr, _full_disk(original))
            with pytest.raises(OSError, match="No space left"):
                write(folder / name)
        assert list(folder.iterdir()) == [], name  # no truncated file, no temporary file
        assert write(folder / name) == [str(folder / name)]  # the retry is not refused
        assert [p.name for p in folder.iterdir()] == [name]
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644
        with pytest.raises(FileExistsError):
            write(folder / name)


def test_leftovers_of_a_killed_writer_are_removed_and_live_ones_kept(tmp_path):
    """A SIGKILL skips atomic_write's clean-up; the next run removes that process's temporary
    file, but not one a live process (or another machine) is writing."""
    import subprocess
    import sys

    from napari_sickle._atomic import _host, _temp_path, remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live = _temp_path(tmp_path / "a.png_regions.csv")  # this process: alive
    stale = tmp_path / f".b.png_regions.csv.{_host()}-{dead_pid}-0123abcd.tmp.csv"
    other_host = tmp_path / f".c.png_regions.csv.elsewhere-{dead_pid}-0123abcd.tmp.csv"
    user_file = tmp_path / ".notes.tmp.csv"
    for p in (stale, other_host, user_file):
        p.write_text("x")
    assert remove_stale_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other_host.name, user_file.name])


# ------------------------------------------------------------------ 5. reruns
def test_rerun_skips_each_done_image_and_loads_no_model_when_nothing_is_left(
    tmp_path, tiny_rbc_models, monkeypatch, capsys
):
    from napari_sickle.analysis.batch import analyze_batch, list_inputs

    d = tmp_path / "in"
    for k in range(3):
        _smear(d / f"a{k}.png", 10 + k)
    (d / "b_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # grouped with a2 (images_per_batch=2)
    out = tmp_path / "out"
    inputs = list_inputs([str(d)])
    kw = dict(device="cpu", num_workers=0, images_per_batch=2, processes=1, threads=1)
    first = analyze_batch(inputs, out, tiny_rbc_models, **kw)
    assert (first.analyzed, first.unreadable) == (3, 1)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*_regions.csv")}

    def no_models():
        raise AssertionError("models loaded although nothing was left to do")

    second = analyze_batch(inputs, out, no_models, **kw)
    assert (second.analyzed, second.skipped_done, second.unreadable) == (0, 3, 1)
    assert pd.read_csv(out / "summary.csv")["error"].notna().sum() == 1

    (out / ".sickle-batch" / "a2.png.json").unlink()  # one image of the group with the unreadable file
    loaded = []
    third = analyze_batch(inputs, out, lambda: loaded.append(1) or tiny_rbc_models, **kw)
    assert (third.analyzed, third.skipped_done, third.unreadable) == (1, 2, 1) and loaded == [1]
    assert {n: (out / n).stat().st_mtime_ns for n in stamps if n != "a2.png_regions.csv"} == {
        n: t for n, t in stamps.items() if n != "a2.png_regions.csv"
    }

    import napari_sickle.models.registry as registry

    args = _models_args()
    monkeypatch.setattr(registry, "load_models", lambda *a, **k: no_models())
    rc, stdout, err = _analyze(capsys, d, "--out", out, *args)
    assert rc == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["skipped_done"] == 3


# ------------------------------------------------------------------ 6. huge inputs
def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` pixels but holds no image data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_huge_images_are_refused_before_decoding(tmp_path, monkeypatch, capsys):
    import napari_sickle.io.images as images
    from napari_sickle.analysis.batch import MAX_PIXELS, SmearImages, load_image
    from napari_sickle.io.images import ImageReadError

    (tmp_path / "in").mkdir()
    huge = _png_header(tmp_path / "in" / "huge.png", 12000, 10000)
    monkeypatch.setattr(images, "read_image", lambda p: pytest.fail("decoded a refused image"))
    assert 12000 * 10000 > MAX_PIXELS
    with pytest.raises(ImageReadError, match="megapixels exceeds the limit"):
        load_image(huge)
    item = SmearImages([("huge.png", huge)])[0]
    assert "exceeds the limit" in item["error"]
    monkeypatch.undo()

    small = _smear(tmp_path / "in2" / "s.png", 1)  # 86400 pixels
    monkeypatch.setenv("NAPARI_SICKLE_MAX_PIXELS", "50000")
    with pytest.raises(ImageReadError, match="exceeds"):
        load_image(small)
    monkeypatch.delenv("NAPARI_SICKLE_MAX_PIXELS")
    rc, stdout, err = _analyze(capsys, small, "--out", tmp_path / "o", "--max-pixels", "50000", *_models_args())
    assert rc == 2 and "none of the 1 input" in _one_line_error(err)
    assert "exceeds" in pd.read_csv(tmp_path / "o" / "summary.csv")["error"].iloc[0]


def test_process_count_follows_per_process_memory(monkeypatch):
    import napari_sickle.analysis.batch as batch

    monkeypatch.setattr(batch, "_cores", lambda: 8)
    monkeypatch.setattr(batch, "_available_memory_gb", lambda: 6.0)
    assert batch.default_processes("cpu") == int(6.0 // batch.PROCESS_MEMORY_GB)
    assert batch.process_memory_gb(40_000_000) > batch.process_memory_gb(2_000_000) > batch.PROCESS_MEMORY_GB
    assert batch.default_processes("cpu", pixels=40_000_000) == 1
    assert batch.default_processes("cpu", pixels=2_000_000) == int(6.0 // batch.process_memory_gb(2_000_000))


# ------------------------------------------------------------------ 7. one-line errors
def test_cli_errors_end_with_one_line(tmp_path, monkeypatch, capsys):
    import torch

    import napari_sickle.analysis.batch as batch
    import napari_sickle.models.registry as registry
    from napari_sickle.models.checkpoint import CheckpointError
    from napari_sickle.models.multilabel import RBCClassifier

    img = _smear(tmp_path / "in" / "a.png", 1)
    args = _models_args()
    real_load = registry.load_models

    def no_models(*a, **k):
        raise AssertionError("models loaded before the output folder was checked")

    monkeypatch.setattr(registry, "load_models", no_models)
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    rc, _, err = _analyze(capsys, img, "--out", afile, *args)
    assert rc == 2 and "existing file" in _one_line_error(err)
    rc, _, err = _analyze(capsys, img, "--out", afile / "sub", *args)  # cannot be created
    assert rc == 2 and "cannot write to the output folder" in _one_line_error(err)
    monkeypatch.setattr(registry, "load_models", real_load)

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(batch, "write_image_results", full_disk)
        rc, _, err = _analyze(capsys, img, "--out", tmp_path / "full", *_models_args())
        assert rc == 2 and "No space left on device" in _one_line_error(err)
        rc, _, err = _analyze(capsys, img, "--out", tmp_path / "full", "--debug", *_models_args())
        assert rc == 2 and "Traceback" in err

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(batch, "analyze_batch", interrupted)
        rc, _, err = _analyze(capsys, img, "--out", tmp_path / "stop", *_models_args())
        assert rc == 130 and "run the same command again" in _one_line_error(err)

    _, clf = _tiny_paths()
    ckpt = torch.load(clf, weights_only=True)
    ckpt["state_dict"] = {k: v for i, (k, v) in enumerate(ckpt["state_dict"].items()) if i % 2}
    broken = tmp_path / "broken.pt"
    torch.save(ckpt, broken)
    with pytest.raises(CheckpointError) as info:
        RBCClassifier.from_checkpoint(broken)
    msg = str(info.value)
    assert str(broken) in msg and "missing keys" in msg and "\n" not in msg and len(msg) < 500
    args = [a if a != str(clf) else str(broken) for a in _models_args()]
    rc, _, err = _analyze(capsys, img, "--out", tmp_path / "o", *args)
    assert rc == 2 and str(broken) in _one_line_error(err)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "zero.png").write_bytes(b"")
    (bad / "trunc.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rc, _, err = _analyze(capsys, bad, "--out", tmp_path / "o2", *_models_args())
    assert rc == 2 and "none of the 2 input" in _one_line_error(err)


def test_regions_csv_without_a_column_says_which(tmp_path):
    from napari_sickle.plugin._reader import napari_get_reader

    p = tmp_path / "r.csv"
    p.write_text("image,region_id,x_min,y_min,x_max\na.png,1,0,0,5\n")
    reader = napari_get_reader(str(p))
    assert reader is not None
    with pytest.raises(ValueError, match="y_max"):
        reader(str(p))


# ------------------------------------------------------------------ 8. quiet edge cases
def test_outputs_and_checkpoints_get_ordinary_permissions(tmp_path, capsys):
    import torch

    from napari_sickle.models.checkpoint import make_checkpoint, save_checkpoint

    ck = save_checkpoint(make_checkpoint("unet", "x", {"w": torch.zeros(2)}), tmp_path / "c.pt")
    assert stat.S_IMODE(ck.stat().st_mode) == 0o644
    img = _smear(tmp_path / "in" / "a.png", 1)
    out = tmp_path / "out"
    rc, _, err = _analyze(capsys, img, "--out", out, *_models_args())
    assert rc == 0, err
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 4 and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}


def test_training_refuses_one_class_and_classes_left_with_one_readable_image(tmp_path, monkeypatch, capsys):
    import napari_sickle.cli.train as cli_train

    def never_called(*args, **kwargs):
        raise AssertionError("the data checks refuse these folders before training starts")

    monkeypatch.setattr(cli_train, "get_trainer", lambda kind: never_called)
    main = cli_train.main
    one = tmp_path / "one"
    for k in range(3):
        _smear(one / "normal" / f"{k}.png", k)
    capsys.readouterr()
    assert main(["bm", "--data", str(one), "--out", str(tmp_path / "o1")]) == 2
    assert "only one class folder" in _one_line_error(capsys.readouterr().err)

    two = tmp_path / "two"
    for k in range(2):
        _smear(two / "normal" / f"{k}.png", k)
    _smear(two / "sickle" / "0.png", 5)
    (two / "sickle" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["bm", "--data", str(two), "--out", str(tmp_path / "o2")]) == 2
    assert "'sickle' has 1 readable image" in _one_line_error(capsys.readouterr().err)


def test_restart_computes_with_the_same_threads_and_bytes(tmp_path, tiny_rbc_models, monkeypatch):
    """A resumed run gives each image the same torch thread count (planned for all the
    groups, not just those left) and computes it alone, so its files are byte-identical."""
    import torch

    import napari_sickle.analysis.batch as batch

    d = tmp_path / "in"
    for k in range(4):
        _smear(d / f"s{k}.png", 20 + k)
    inputs = batch.list_inputs([str(d)])
    monkeypatch.setattr(batch, "_cores", lambda: 2)
    seen = []
    real = batch._analyze_indices

    def spy(inputs_, todo, *a, **k):
        seen.append((list(todo), torch.get_num_threads()))
        return real(inputs_, todo, *a, **k)

    monkeypatch.setattr(batch, "_analyze_indices", spy)

    def in_process(parts, inputs_, out, paths, device, threads, workers, opts, on_done, on_error):
        """The analysing processes' work, here (each 'process' with its thread count)."""
        for p in parts:
            torch.set_num_threads(threads)
            spy(inputs_, p, out, tiny_rbc_models, num_workers=0, on_done=on_done, on_error=on_error, **opts)

    monkeypatch.setattr(batch, "_run_processes", in_process)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        kw = dict(device="cpu", num_workers=0, images_per_batch=2, processes=2)
        full = tmp_path / "full"
        batch.analyze_batch(inputs, full, tiny_rbc_models, **kw)
        part = tmp_path / "part"
        batch.analyze_batch(inputs[:3], part, tiny_rbc_models, **kw)  # stopped before the last image
        torch.set_num_threads(2)
        seen.clear()
        rep = batch.analyze_batch(inputs, part, tiny_rbc_models, **kw)  # one group left: this process
    finally:
        torch.set_num_threads(saved)
    assert rep.analyzed == 1 and rep.processes == 1
    assert seen == [([3], 1)]  # two processes planned for the run: one thread, also when resuming
    for name, _ in inputs:
        assert (part / f"{name}_regions.csv").read_bytes() == (full / f"{name}_regions.csv").read_bytes()
