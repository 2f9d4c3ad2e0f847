"""Streaming batch analysis (``python -m napari_sickle.analyze``): same numbers as the widget's
code path, crash-safe incremental outputs, restart skips done images, bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

N_IMAGES = 8
SHAPE = (240, 360)


@pytest.fixture(scope="module")
def tiny_models(tiny_rbc_models):
    return tiny_rbc_models


@pytest.fixture(scope="module")
def smear_folder(tmp_path_factory, tiny_models):
    import imageio.v3 as iio

    from napari_sickle.data.simulate import simulate_smear

    d = tmp_path_factory.mktemp("smears")
    for k in range(N_IMAGES):
        iio.imwrite(d / f"smear{k:02d}.png", simulate_smear(seed=300 + k, shape=SHAPE).image)
    (d / "smear04b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # unreadable: counted and skipped
    return d


def _models_args() -> list[str]:
    from conftest import tiny_rbc_paths

    det, clf = tiny_rbc_paths()
    return ["--detector", str(det), "--classifier", str(clf)]


def _cmd(src, out, *extra):
    return [
        sys.executable,
        "-m",
        "napari_sickle.analyze",
        str(src),
        "--out",
        str(out),
        "--device",
        "cpu",
        *_models_args(),
        "--threads",
        "1",
        "--workers",
        "1",
        "--images-per-batch",
        "2",
        "--processes",
        "2",
        *extra,
    ]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def _run(src, out, *extra) -> dict:
    r = subprocess.run(_cmd(src, out, *extra), capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _run_here(src, out, capsys) -> dict:
    """The same command in this process (saves a start-up), with the same single torch thread."""
    import torch

    from napari_sickle.analyze import main

    threads = torch.get_num_threads()
    try:
        capsys.readouterr()
        assert main(_cmd(src, out)[3:]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _csvs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.csv"))}


def test_streaming_matches_widget_code_path(tiny_models, smear_folder, tmp_path):
    """In-process run: each image's regions equal what the widget's worker computes for it."""
    from napari_sickle.analysis.batch import analyze_batch, list_inputs
    from napari_sickle.io.formats import read_regions_csv, validate_regions
    from napari_sickle.io.images import read_image
    from napari_sickle.widgets.analyze import _run_analysis

    files = [smear_folder / f"smear{k:02d}.png" for k in range(3)]
    rep = analyze_batch(
        list_inputs([str(f) for f in files]),
        tmp_path,
        tiny_models,
        device="cpu",
        num_workers=0,
        images_per_batch=3,
        batch_size=7,
    )  # 7: batches straddle images
    assert rep.analyzed == 3 and rep.unreadable == 0 and rep.regions > 0
    cache = {(None, None, None, "cpu"): tiny_models}  # the widget's model cache, holding the same models
    for f in files:
        res = _run_analysis(read_image(f), None, None, None, "cpu", 0.5, 0.5, 64, f.name, cache)
        want = validate_regions(res.to_dataframe(f.name))
        got = read_regions_csv(tmp_path / f"{f.name}_regions.csv")
        assert len(got) == len(want) > 0
        pd.testing.assert_frame_equal(
            got.reset_index(drop=True),
            want.reset_index(drop=True),
            check_dtype=False,
            check_exact=False,
            rtol=1e-5,
            atol=1e-6,
        )
    summ = pd.read_csv(tmp_path / "summary.csv")
    assert list(summ["image"]) == [str(f) for f in files]
    assert list(summ["regions_csv"]) == [f"{f.name}_regions.csv" for f in files]


@pytest.fixture(scope="module")
def uninterrupted(smear_folder, tmp_path_factory) -> Path:
    """Reference: the whole folder in one run of the command, two analysing processes."""
    full = tmp_path_factory.mktemp("uninterrupted")
    ref = _run(smear_folder, full)
    assert ref["analyzed"] == N_IMAGES and ref["unreadable"] == 1 and ref["skipped_done"] == 0
    assert ref["processes"] == 2 and ref["ranks"] == 1
    return full


def test_killed_run_restarts_to_identical_csvs(smear_folder, uninterrupted, tmp_path, capsys):
    full = uninterrupted

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(smear_folder, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    state = out / ".sickle-batch"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 300 and proc.poll() is None and len(list(state.glob("*.png.json"))) < 4:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = sorted(p.stem for p in state.glob("*.png.json"))  # image names (error markers: *.error.json)
    time.sleep(3)  # the analysing processes died with their parent: nothing more is written
    assert sorted(p.stem for p in state.glob("*.png.json")) == done_before
    assert 4 <= len(done_before) < N_IMAGES and not (out / "summary.csv").exists()
    for name in done_before:  # every image marked done has its complete outputs
        assert (out / f"{name}_regions.csv").read_bytes() == (full / f"{name}_regions.csv").read_bytes()
    # every image already done is skipped on its own (also one whose group was cut short)
    kept = {n: (out / f"{n}_regions.csv").stat().st_mtime_ns for n in done_before}

    again = _run(smear_folder, out)
    assert again["skipped_done"] == len(kept) and again["analyzed"] == N_IMAGES - again["skipped_done"]
    assert {n: (out / f"{n}_regions.csv").stat().st_mtime_ns for n in kept} == kept  # not redone
    assert _csvs(out) == _csvs(full)  # byte-identical regions CSVs and summary
    summ = pd.read_csv(out / "summary.csv")
    assert len(summ) == N_IMAGES + 1 and summ["error"].notna().sum() == 1
    assert summ.loc[summ["error"].notna(), "image"].iloc[0].endswith("smear04b.png")

    third = _run_here(smear_folder, out, capsys)  # all done; the unchanged unreadable file is not retried
    assert third["analyzed"] == 0 and third["skipped_done"] == N_IMAGES and third["unreadable"] == 1
    assert _csvs(out) == _csvs(full)


def test_torchrun_two_ranks_share_the_images(smear_folder, uninterrupted, tmp_path):
    """Two gloo ranks under torchrun, one analysing process each: every image is done once, by
    either rank, into one folder; rank 0 writes the summary; same bytes as one machine."""
    out = tmp_path / "ranks"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        *_cmd(smear_folder, out)[2:-2],
        "--processes",
        "1",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # only rank 0 reports
    rep = json.loads(lines[0])
    assert rep["ranks"] == 2 and rep["processes"] == 2 and rep["analyzed"] == N_IMAGES and rep["unreadable"] == 1
    assert _csvs(out) == _csvs(uninterrupted)


def test_bad_inputs(tmp_path, tiny_models):
    from napari_sickle.analyze import main

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--out", str(tmp_path / "o1"), "--device", "cpu", *_models_args()]) == 2
    assert main([str(tmp_path / "nope.png"), "--out", str(tmp_path / "o2"), "--device", "cpu", *_models_args()]) == 2
    assert main([str(empty), "--out", str(tmp_path / "o3"), "--images-per-batch", "0"]) == 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "zero.png").write_bytes(b"")
    (bad / "tiny.png").write_bytes(b"")
    import imageio.v3 as iio

    iio.imwrite(bad / "small.png", np.full((8, 8, 3), 200, np.uint8))  # too small for a cell: empty result
    assert main([str(bad), "--out", str(tmp_path / "o4"), "--device", "cpu", *_models_args(), "--workers", "0"]) == 0
    summ = pd.read_csv(tmp_path / "o4" / "summary.csv")
    assert summ["error"].notna().sum() == 2
    assert int(summ.loc[summ["image"].str.endswith("small.png"), "n_regions"].iloc[0]) == 0


def test_several_smears_per_detector_call_give_the_per_image_regions(tiny_models):
    """``detect_many`` (one detector call for several smears) gives each smear the boxes and
    scores of the widget's per-image ``detect_regions``."""
    from napari_sickle.analysis.batch import detect_many
    from napari_sickle.analysis.smear import detect_regions, foreground_mask
    from napari_sickle.data.simulate import simulate_smear

    rgbs = [simulate_smear(seed=310 + k, shape=SHAPE).image for k in range(3)]
    fgs = [foreground_mask(r) for r in rgbs]
    got = detect_many(rgbs, fgs, tiny_models.detector)
    assert len(got) == 3
    for rgb, (boxes, scores) in zip(rgbs, got):
        ref_boxes, ref_scores, _ = detect_regions(rgb, tiny_models.detector)
        assert len(ref_boxes) > 0
        np.testing.assert_allclose(boxes, ref_boxes, atol=1e-3)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_batched_detection_and_the_writer_thread_keep_the_results(tiny_models, smear_folder, tmp_path):
    """Four smears per detector call write the same regions CSVs as one per call."""
    from napari_sickle.analysis.batch import analyze_batch, list_inputs

    inputs = list_inputs([str(smear_folder)])
    kw = dict(device="cpu", num_workers=0, processes=1, threads=1, images_per_batch=4, overlay=False)
    one = analyze_batch(inputs, tmp_path / "one", tiny_models, detect_images=1, **kw)
    four = analyze_batch(inputs, tmp_path / "four", tiny_models, detect_images=4, **kw)
    assert one.analyzed == four.analyzed == N_IMAGES and one.unreadable == four.unreadable == 1
    a, b = _csvs(tmp_path / "one"), _csvs(tmp_path / "four")
    assert a.keys() == b.keys()
    for name in a:
        if name == "summary.csv":
            continue
        x, y = pd.read_csv(tmp_path / "one" / name), pd.read_csv(tmp_path / "four" / name)
        pd.testing.assert_frame_equal(x, y, check_exact=False, atol=1e-4)


def test_a_failing_write_is_raised_and_the_rerun_completes(tiny_models, smear_folder, tmp_path, monkeypatch):
    """A write failure on the writer thread (here: a full disk at the third image) stops the
    run with that error; the images written before keep their done markers, the failed one has
    none, and a rerun analyses only what is missing."""
    import napari_sickle.analysis.batch as outputs
    from napari_sickle.analysis.batch import STATE_DIR, analyze_batch, list_inputs

    inputs = list_inputs([str(smear_folder)])
    real = outputs.write_image_results
    calls = []

    def full_disk(out, name, *a, **k):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(out, name, *a, **k)

    monkeypatch.setattr(outputs, "write_image_results", full_disk)
    kw = dict(device="cpu", num_workers=0, processes=1, threads=1, overlay=False)
    with pytest.raises(OSError, match="No space left"):
        analyze_batch(inputs, tmp_path / "o", tiny_models, **kw)
    markers = sorted(p.name for p in (tmp_path / "o" / STATE_DIR).glob("*.png.json"))
    assert markers == [f"{n}.json" for n in calls[:2]]
    monkeypatch.setattr(outputs, "write_image_results", real)
    rep = analyze_batch(inputs, tmp_path / "o", tiny_models, **kw)
    assert rep.skipped_done == 2 and rep.analyzed == N_IMAGES - 2 and rep.unreadable == 1


def test_result_writer_queue_is_bounded_and_keeps_the_order(tmp_path):
    import threading

    from napari_sickle.analysis.batch import ResultWriter

    gate, seen = threading.Event(), []
    w = ResultWriter(
        tmp_path, [("a", None)] * 6, overlay=False, on_done=None, on_error=lambda i, m: (gate.wait(5), seen.append(i))
    )
    t = threading.Thread(target=lambda: [w.put_error(i, "x") for i in range(6)])
    t.start()
    t.join(0.5)
    assert t.is_alive()  # one item in the writer's hands, 4 queued, the sixth waits
    gate.set()
    t.join(5)
    w.close()
    assert seen == list(range(6))


def test_summary_warns_about_rows_from_an_earlier_version(tmp_path):
    """A done marker without ``scd_reason`` (written before the type-uncertainty SCD rule) is
    listed as it is, with a warning that --overwrite redoes it; current markers give none."""
    import warnings

    from napari_sickle.analysis.batch_outputs import marker_path, write_summary

    inputs = [("a.png", tmp_path / "a.png"), ("b.png", tmp_path / "b.png")]
    marker_path(tmp_path, "a.png").parent.mkdir(parents=True)
    old = {"image": "a.png", "n_regions": 30, "scd_call": "positive"}
    marker_path(tmp_path, "a.png").write_text(json.dumps(old))
    marker_path(tmp_path, "b.png").write_text(json.dumps({**old, "image": "b.png", "scd_reason": "x"}))
    with pytest.warns(UserWarning, match="1 image.*earlier version.*--overwrite"):
        path = write_summary(tmp_path, inputs, {})
    assert list(pd.read_csv(path)["image"]) == ["a.png", "b.png"]
    marker_path(tmp_path, "a.png").write_text(json.dumps({**old, "scd_reason": "x"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_summary(tmp_path, inputs, {})
