"""torchrun / DistributedDataParallel training on CPU (gloo), two processes.

The BM trainer on simulated cells with ``tiny_vit`` (no BatchNorm: per-rank BatchNorm
statistics would differ from one process's; gloo has no SyncBatchNorm), no augmentation
and a given lr, so two ranks with batch B must give the checkpoint one process gives with
batch 2B: the same global batches (distributed weighted sampler) and averaged gradients.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

# 4 classes x 10 simulated cells: 32 training cells (even, so both ranks get 16), 8 held out
ARGS = [
    "bm",
    "--data",
    "simulated",
    "--backbone",
    "tiny_vit",
    "--threads",
    "1",
    "--lr",
    "0.05",
    "--seed",
    "0",
    "-o",
    "augment=False",
    "-o",
    "n_per_class=10",
    "-o",
    "pretrained=False",
    "--json-progress",
]
PER_RANK_BATCH = 4
EPOCHS = 3
#: ``python -m napari_sickle.train`` whose rank ``FAIL_AT=RANK:EPOCH`` crashes on the first attempt
CRASH_WORKER = Path(__file__).with_name("crash_worker.py")


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("FAIL_AT", None)
    env.update(extra)
    return env


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _run(cmd, env, timeout=600):
    # own process group: on a timeout the workers go too, not only torchrun
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"timed out after {timeout} s\nstdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}"
    return _events(stdout)


def _torchrun(out: Path, *extra_torchrun, env=None, epochs=EPOCHS, program=("-m", "napari_sickle.train")):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *extra_torchrun,
        *program,
        *ARGS,
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--batch-size",
        str(PER_RANK_BATCH),
    ]
    return _run(cmd, env or _env())


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_weights(a: dict, b: dict, atol=1e-5):
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst < atol, f"checkpoints differ by {worst}"


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, global batch 2 x PER_RANK_BATCH: the reference."""
    out = tmp_path_factory.mktemp("single")
    ev = _run(
        [
            sys.executable,
            "-m",
            "napari_sickle.train",
            *ARGS,
            "--out",
            str(out),
            "--epochs",
            str(EPOCHS),
            "--batch-size",
            str(2 * PER_RANK_BATCH),
        ],
        _env(),
    )
    return out, ev


def test_weighted_sampler_shares_one_global_draw():
    from napari_sickle.training.distributed import DistributedWeightedSampler

    w = np.r_[np.full(30, 1 / 30), np.full(6, 1 / 6)]  # two classes, 30 and 6 items: balanced draw
    one = DistributedWeightedSampler(w, 36, seed=5, rank=0, world_size=1)
    parts = [DistributedWeightedSampler(w, 36, seed=5, rank=r, world_size=3) for r in range(3)]
    for epoch in (0, 1):
        for s in (one, *parts):
            s.set_epoch(epoch)
        full = list(one)
        shares = [list(p) for p in parts]
        assert all(len(s) == 12 for s in shares)
        merged = [shares[i % 3][i // 3] for i in range(36)]
        assert merged == full  # the ranks' strided shares rebuild the single-process draw
    epoch1 = list(one)
    one.set_epoch(0)
    assert list(one) != epoch1  # each epoch draws anew (seed + epoch)
    many = DistributedWeightedSampler(w, 20000, seed=0, rank=1, world_size=2)
    frac = np.mean(np.asarray(list(many)) >= 30)
    assert abs(frac - 0.5) < 0.03  # still class-balanced on one rank


def test_exit_process_skips_interpreter_shutdown_only_under_torchrun(monkeypatch, capsys):
    """Under torchrun the worker flushes and leaves with ``os._exit`` (a gloo thread freeing a
    tensor during interpreter shutdown aborts the process); elsewhere it is a plain exit."""
    from napari_sickle.training import distributed

    for var in distributed.TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit) as plain:
        distributed.exit_process(3)
    assert plain.value.code == 3
    codes = []
    monkeypatch.setattr(distributed.os, "_exit", codes.append)
    for var in distributed.TORCHRUN_VARS:
        monkeypatch.setenv(var, "0")
    print("last line", end="")
    distributed.exit_process(None)
    assert codes == [0]
    assert capsys.readouterr().out == "last line"


def test_two_ranks_train_and_match_one_process(single, tmp_path):
    ref_out, ref_ev = single
    ev = _torchrun(tmp_path / "ddp")
    done = [e for e in ev if e["event"] == "done"]
    assert len(done) == 1, "only rank 0 reports"
    assert done[0]["world_size"] == 2
    ranks = done[0]["ranks"]
    steps = 32 // (2 * PER_RANK_BATCH) * EPOCHS
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["steps"] == steps and r["samples"] == steps * PER_RANK_BATCH for r in ranks)  # both trained
    assert len([e for e in ev if e["event"] == "start"]) == 1  # rank 1 printed nothing
    a, b = _state(ref_out / "last.pt"), _state(tmp_path / "ddp" / "last.pt")
    _assert_same_weights(a["state_dict"], b["state_dict"])
    ref_loss = [h["loss"] for h in a["extra"]["history"]]
    assert abs(ref_loss[-1] - ref_loss[0]) > 1e-2  # the weights moved: equality is not trivial
    np.testing.assert_allclose(
        [h["loss"] for h in b["extra"]["history"]], ref_loss, rtol=5e-5
    )  # reduced loss (float32 sum order)


def test_two_ranks_sharded_validation_matches_one_process(tmp_path):
    """The plateau schedule validates every epoch: the sharded validation loss of two ranks
    equals the single process's (the default fixed schedule does not validate)."""
    plateau = ["-o", "schedule=plateau"]
    ref = tmp_path / "single"
    _run(
        [
            sys.executable,
            "-m",
            "napari_sickle.train",
            *ARGS,
            *plateau,
            "--out",
            str(ref),
            "--epochs",
            "2",
            "--batch-size",
            str(2 * PER_RANK_BATCH),
        ],
        _env(),
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "napari_sickle.train",
        *ARGS,
        *plateau,
        "--out",
        str(tmp_path / "ddp"),
        "--epochs",
        "2",
        "--batch-size",
        str(PER_RANK_BATCH),
    ]
    _run(cmd, _env())
    a, b = _state(ref / "last.pt"), _state(tmp_path / "ddp" / "last.pt")
    va = [h["val_loss"] for h in a["extra"]["history"]]
    assert len(va) == 2
    np.testing.assert_allclose([h["val_loss"] for h in b["extra"]["history"]], va, rtol=1e-5)


def test_worker_death_restart_resumes_from_last(single, tmp_path):
    """Rank 1 dies at the end of epoch 2 (os._exit); torchrun --max-restarts=1 restarts both
    workers, which resume from OUT/last.pt and finish with the weights of an uninterrupted run."""
    ref_out, _ = single
    out = tmp_path / "restart"
    ev = _torchrun(out, "--max-restarts=1", env=_env(FAIL_AT="1:2"), program=(str(CRASH_WORKER),))
    starts = [e for e in ev if e["event"] == "start"]
    assert [s["restart"] for s in starts] == [0, 1]
    assert starts[0]["resume"] is None and starts[1]["resume"] == str(out / "last.pt")
    epochs_seen = [e["epoch"] for e in ev if e["event"] == "epoch"]
    second = epochs_seen[epochs_seen.index(2) + 1 :]  # after the crash the count continues, no restart at 1
    assert second and second[-1] == EPOCHS and second[0] in (2, 3)
    assert [e for e in ev if e["event"] == "done"]
    ck = _state(out / "last.pt")
    assert ck["extra"]["epoch"] == EPOCHS
    assert [h["epoch"] for h in ck["extra"]["history"]] == list(range(1, EPOCHS + 1))
    _assert_same_weights(_state(ref_out / "last.pt")["state_dict"], ck["state_dict"])


def test_resume_auto_single_process(tmp_path):
    """'--resume auto' continues OUT/last.pt: epoch 1, then epochs 2..3 in a second run."""
    from napari_sickle.train import main

    out = tmp_path / "auto"
    base = ARGS[:-1] + ["--out", str(out), "--batch-size", "16"]
    assert main(base + ["--epochs", "1", "--resume", "auto"]) == 0  # nothing to resume: fresh start
    assert _state(out / "last.pt")["extra"]["epoch"] == 1
    assert main(base + ["--epochs", "3", "--resume", "auto"]) == 0
    ck = _state(out / "last.pt")
    assert [h["epoch"] for h in ck["extra"]["history"]] == [1, 2, 3]
