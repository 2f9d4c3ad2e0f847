"""Train any napari-sickle model from the command line.

    python -m napari_sickle.train {detector,multilabel,bm,unet} --data D --out DIR
        [--epochs N] [--device auto|cuda|mps|cpu] [--backbone NAME] [--seed S]
        [--resume DIR/last.pt] [--folds K] [--json-progress] [--threads T]
        [--batch-size B] [--lr LR] [--input-size PX] [-o KEY=VALUE ...]

    python -m napari_sickle.train multilabel-protocol --data SICKLE_DATA/sickle-rbc --out DIR

``--data`` is a folder (class folders of crops, ``images/`` + ``masks/`` pairs, a Pascal
VOC folder), a multi-label CSV table, or ``simulated`` for built-in simulated data.
Each kind dispatches to ``napari_sickle.training.<kind>.train_<kind>`` (see
docs/training.md for the contract).

On a terminal a tqdm progress bar is shown. With ``--json-progress`` exactly one JSON
object is printed per line on stdout, with ``event`` one of ``start``, ``step``,
``epoch``, ``checkpoint``, ``warning``, ``done``, ``error``. Bad input (an empty folder, a
class folder with a single image, a CSV with a missing column, ``--resume`` on a missing
file, ...) ends with exit code 2 and a one-line message, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .._malloc import tune_malloc
from ..constants import DEVICES
from ._common import (
    EXIT_FAILED,
    EXIT_USAGE,
    PROTOCOL,
    UsageError,
    add_option_argument,
    check_data,
    debug_requested,
    is_image_file,
    on_sigterm,
    one_line,
    to_json,
    user_error_types,
)

KINDS = ("detector", "multilabel", "bm", "unet")


# ---------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------
def get_trainer(kind: str) -> Callable[..., dict]:
    """Return ``train_<kind>`` from ``napari_sickle.training.<kind>`` (``run_protocol`` for
    the multi-label protocol)."""
    if kind == PROTOCOL:
        mod_name, func_name = "napari_sickle.training.protocol", "run_protocol"
    else:
        mod_name, func_name = f"napari_sickle.training.{kind}", f"train_{kind}"
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if exc.name and mod_name.startswith(exc.name):
            raise UsageError(
                f"Training for {kind!r} is not available in this installation ({mod_name} is missing)."
            ) from exc
        raise
    try:
        return getattr(module, func_name)
    except AttributeError as exc:
        raise UsageError(f"{mod_name} has no {func_name}().") from exc


# ---------------------------------------------------------------------------------------
# input checks that need the data read (check_data in _common needs none)
# ---------------------------------------------------------------------------------------
def check_readable_classes(data: str, kind: str, bad: list[str]) -> None:
    """UsageError when, once the unreadable images ``bad`` are skipped, a class folder keeps
    fewer than two images (one to train on, one to validate)."""
    path = Path(data).expanduser()
    if data == "simulated" or kind not in ("multilabel", "bm", PROTOCOL) or not path.is_dir():
        return
    names = {p.name for p in path.iterdir()}
    if {"images", "masks"} <= names or {"JPEGImages", "Annotations"} <= names:
        return
    skipped = {str(Path(b).resolve()) for b in bad}
    for d in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        n = sum(1 for p in d.rglob("*") if is_image_file(p) and str(p.resolve()) not in skipped)
        if n < 2:
            raise UsageError(
                f"--data {data}: class folder '{d.name}' has {n} readable image(s) once the "
                "unreadable ones are skipped; every class needs at least two."
            )


def count_unreadable(data: str, limit: int = 5000) -> tuple[int, list[str]]:
    """Count image files under ``data`` that cannot be opened (the trainers skip them)."""
    if data == "simulated" or not Path(data).is_dir():
        return 0, []
    try:
        from ..io.images import read_image
    except Exception:  # the IO module is not importable: nothing to count
        return 0, []
    bad: list[str] = []
    files = [p for p in Path(data).rglob("*") if is_image_file(p)][:limit]
    for p in files:
        try:
            read_image(p)
        except Exception:
            bad.append(str(p))
    return len(bad), bad


# ---------------------------------------------------------------------------------------
# progress reporting
# ---------------------------------------------------------------------------------------
class Reporter:
    """Turns ``progress``/``log`` callbacks into JSON lines or a tqdm bar."""

    def __init__(self, json_mode: bool, out: Path, stream=None, min_interval: float = 0.25, quiet: bool = False):
        self.json_mode = json_mode
        self.quiet = quiet  # ranks other than 0 under torchrun: say nothing
        self.out = Path(out)
        self.stream = stream or sys.stdout
        self.min_interval = min_interval
        self._last_emit = 0.0
        self._stage = None
        self._bar = None
        self._ckpt_mtimes: dict[str, float] = {}
        for name in ("last.pt", "best.pt"):  # files from an earlier run are not news
            try:
                self._ckpt_mtimes[name] = (self.out / name).stat().st_mtime_ns
            except OSError:
                pass

    def emit(self, event: str, **fields) -> None:
        if self.json_mode and not self.quiet:
            self.stream.write(to_json({"event": event, **fields}) + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        if not self.json_mode and not self.quiet:
            if self._bar is not None:
                self._bar.write(text, file=sys.stderr)
            else:
                print(text, file=sys.stderr, flush=True)

    # progress(stage, done, total)
    def progress(self, stage: str, done: int, total: int) -> None:
        if self.quiet:
            return
        self.check_checkpoints()
        now = time.monotonic()
        stage_changed = stage != self._stage
        if self.json_mode:
            if stage_changed or done >= total or now - self._last_emit >= self.min_interval:
                self._last_emit = now
                self.emit("step", stage=str(stage), done=int(done), total=int(total))
            self._stage = stage
            return
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover
            return
        if stage_changed or self._bar is None:
            if self._bar is not None:
                self._bar.close()
            self._bar = tqdm(
                total=max(int(total), 1),
                desc=str(stage),
                unit="it",
                leave=False,
                disable=None,
                file=sys.stderr,
                dynamic_ncols=True,
            )
            self._stage = stage
        if self._bar.total != max(int(total), 1):
            self._bar.total = max(int(total), 1)
        self._bar.n = int(done)
        self._bar.refresh()

    # log(dict)
    def log(self, record: dict) -> None:
        if self.quiet:
            return
        record = dict(record)
        event = record.pop("event", "log")
        if self.json_mode:
            self.emit(event, **record)
        else:
            if event == "epoch":
                parts = [f"epoch {record.get('epoch')}/{record.get('epochs')}"]
                for key in ("loss", "val_loss"):
                    if isinstance(record.get(key), (int, float)):
                        parts.append(f"{key} {record[key]:.4f}")
                if isinstance(record.get("metric"), (int, float)):
                    parts.append(f"{record.get('metric_name', 'metric')} {record['metric']:.4f}")
                self.message("  ".join(parts))
            elif event in ("warning", "fold", "info"):
                self.message(f"{event}: " + ", ".join(f"{k}={v}" for k, v in record.items()))
        if event == "epoch":
            self.check_checkpoints(epoch=record.get("epoch"))

    def check_checkpoints(self, epoch=None) -> None:
        """Emit a ``checkpoint`` event when last.pt / best.pt changed on disk (checked at
        every progress/log call; ``epoch`` is the epoch being logged, if any)."""
        for name in ("last.pt", "best.pt"):
            path = self.out / name
            try:
                mtime = path.stat().st_mtime_ns
            except OSError:
                continue
            if self._ckpt_mtimes.get(name) != mtime:
                self._ckpt_mtimes[name] = mtime
                self.emit("checkpoint", path=str(path), which=name[:-3], epoch=epoch)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# ---------------------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------------------
def _add_common(p: argparse.ArgumentParser, protocol: bool = False) -> None:
    p.add_argument(
        "--data", required=True, help="folder (class folders, images/+masks/, VOC), multi-label CSV, or 'simulated'"
    )
    p.add_argument("--out", required=True, help="output folder for best.pt / last.pt")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (trainer default if omitted)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--backbone", default=None, help="backbone/architecture name (trainer default if omitted)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=None, help="k for k-fold cross-validation where it applies")
    if not protocol:
        p.add_argument(
            "--resume",
            default=None,
            help="continue an interrupted run from its last.pt ('auto': OUT/last.pt if it exists; "
            "under torchrun that is the default)",
        )
    p.add_argument("--json-progress", action="store_true", help="print one JSON object per line")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument(
        "--input-size",
        dest="input_size",
        type=int,
        default=None,
        help="network input size in pixels (kind-specific default)",
    )
    add_option_argument(p, "extra trainer option (repeatable), e.g. -o n_composed=1000")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m napari_sickle.train",
        description="Train napari-sickle models (detector, multilabel, bm, unet).",
    )
    sub = parser.add_subparsers(dest="kind", required=True, metavar="{detector,multilabel,bm,unet,multilabel-protocol}")
    helps = {
        "detector": "Faster R-CNN RBC region detector (images/+masks/, VOC, or simulated)",
        "multilabel": "six-type multi-label RBC classifier + abnormal classifier",
        "bm": "bone-marrow / white-cell classifier (class folders)",
        "unet": "U-Net cell segmentation (images/+masks/ or simulated)",
    }
    for kind in KINDS:
        _add_common(sub.add_parser(kind, help=helps[kind], description=helps[kind]))
    p = sub.add_parser(PROTOCOL, help="the paper's Table 1 protocol (5-fold CV; Models A, A*, B) + abnormal accuracy")
    _add_common(p, protocol=True)
    return parser


def build_kwargs(args: argparse.Namespace, progress, log) -> dict:
    kwargs: dict[str, Any] = dict(
        epochs=args.epochs,
        device=args.device,
        backbone=args.backbone,
        seed=args.seed,
        folds=args.folds,
        progress=progress,
        log=log,
    )
    if args.kind != PROTOCOL:
        kwargs["resume"] = args.resume
    for name in ("batch_size", "lr", "input_size"):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    for key, value in args.options:
        kwargs[key] = value
    return kwargs


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_malloc()
    out = Path(args.out).expanduser()
    from ..training import distributed as ddp_glue  # torchrun/DDP glue; no-op in a plain process

    rep = Reporter(
        args.json_progress, out, quiet=ddp_glue.launched_by_torchrun() and os.environ.get("RANK", "0") != "0"
    )
    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not in the main thread (e.g. called from a test thread)
        pass
    try:
        return _train(args, out, rep, ddp_glue)
    except KeyboardInterrupt:
        return _stopped(args, out, rep, ddp_glue)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear line
        return _failed(args, exc, rep, ddp_glue)


def _check_args(args: argparse.Namespace, out: Path, ddp_glue) -> None:
    """UsageError for a bad ``--resume``/``--epochs``/``--folds``; settles ``args.resume``."""
    if args.kind != PROTOCOL and args.resume not in (None, "auto") and not Path(args.resume).expanduser().is_file():
        raise UsageError(f"--resume {args.resume}: no such checkpoint file.")
    if args.kind != PROTOCOL and not args.folds:  # '--resume auto', and every torchrun (re)start
        args.resume = ddp_glue.auto_resume_path(out, args.resume)
    elif args.kind != PROTOCOL and args.resume == "auto":
        args.resume = None
    if args.epochs is not None and args.epochs < 1:
        raise UsageError("--epochs must be at least 1.")
    if args.folds is not None and args.folds < 2:
        raise UsageError("--folds must be at least 2.")


def _train(args: argparse.Namespace, out: Path, rep: Reporter, ddp_glue) -> int:
    """Check the input, run the trainer and report ``start`` ... ``done``."""
    t0 = time.perf_counter()
    _check_args(args, out, ddp_glue)
    from ..training.recipes import recipe_kwargs

    trainer = get_trainer(args.kind)
    recipe_kwargs(args.kind, build_kwargs(args, None, None), trainer)  # unknown -o keys: exit 2 before any work
    check_data(args.data, args.kind)
    out.mkdir(parents=True, exist_ok=True)
    ctx = ddp_glue.init_from_env(args.device)
    if args.kind != PROTOCOL:  # rank 0's resume decision for all (a node may not see OUT yet)
        args.resume = ddp_glue.broadcast(args.resume)
    n_bad, bad = count_unreadable(args.data) if ddp_glue.is_main() else (0, [])
    if n_bad:
        check_readable_classes(args.data, args.kind, bad)
    rep.emit(
        "start",
        kind=args.kind,
        data=str(args.data),
        out=str(out),
        epochs=args.epochs,
        device=args.device,
        backbone=args.backbone,
        seed=args.seed,
        resume=getattr(args, "resume", None),
        pid=os.getpid(),
        world_size=ctx.world_size,
        backend=ctx.backend,
        restart=ctx.restart,
    )
    if n_bad:
        rep.emit("warning", message=f"{n_bad} unreadable image(s) will be skipped", skipped=n_bad, files=bad[:20])
        rep.message(f"warning: {n_bad} unreadable image(s) will be skipped (e.g. {bad[0]})")
    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
    if ctx.enabled and args.kind in ("multilabel", PROTOCOL) and not ddp_glue.is_main():
        result = {}  # heads train on cached features on rank 0; the other ranks wait (docs/distributed.md)
    else:
        kwargs = recipe_kwargs(args.kind, build_kwargs(args, rep.progress, rep.log))  # recipe= + run settings
        result = trainer(args.data, str(out), **kwargs)
    ranks = ddp_glue.rank_counts() if ctx.enabled else None
    ddp_glue.cleanup(success=True)
    if not ddp_glue.is_main() and ctx.enabled:
        return 0
    rep.check_checkpoints()
    result = dict(result or {})
    seconds = float(result.get("seconds", time.perf_counter() - t0))
    rep.close()
    done = {"checkpoint": result.get("checkpoint"), "metrics": result.get("metrics", {}), "seconds": seconds}
    done["skipped"] = n_bad
    if args.kind == PROTOCOL:
        done["report"] = result.get("report")
    if ranks is not None:
        done["world_size"], done["ranks"] = ctx.world_size, ranks
    rep.emit("done", **done)
    if not args.json_progress:
        print(to_json({k: v for k, v in done.items()}), flush=True)
    return 0


def _stopped(args: argparse.Namespace, out: Path, rep: Reporter, ddp_glue) -> int:
    """Ctrl-C or SIGTERM: one line naming the checkpoint to resume from; exit code 130."""
    ddp_glue.cleanup(success=False)
    rep.close()
    rep.check_checkpoints()
    last = out / "last.pt"
    msg = "stopped by the user" + (f"; resume with --resume {last}" if last.is_file() else "")
    rep.emit("error", message=msg, stopped=True, checkpoint=str(last) if last.is_file() else None)
    if not args.json_progress:
        print(f"error: {msg}", file=sys.stderr, flush=True)
    return 130


def _failed(args: argparse.Namespace, exc: Exception, rep: Reporter, ddp_glue) -> int:
    """One line for the failure: exit code 2 for bad input, 1 for anything else."""
    ddp_glue.cleanup(success=False)
    rep.close()
    user = isinstance(exc, user_error_types()) or (
        isinstance(exc, (ValueError, KeyError)) and type(exc).__module__.startswith(("napari_sickle", "builtins"))
    )
    msg = one_line(exc)
    if not user:
        msg = f"{type(exc).__name__}: {msg}"
    rep.emit("error", message=msg, type=type(exc).__name__)
    if not args.json_progress:
        print(f"error: {msg}", file=sys.stderr, flush=True)
    if debug_requested(args):
        import traceback

        traceback.print_exc()
    return EXIT_USAGE if user else EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    from ..training.distributed import exit_process

    exit_process(main())
