"""Batch RBC analysis: ``python -m napari_sickle.analyze INPUTS... --out DIR``.

For each input image writes ``<name>_regions.csv`` (regions CSV schema) and
``<name>_overlay.png`` (boxes: red = abnormal, green = normal), where ``<name>`` is the image's
file name with its extension (``smear01.png_regions.csv``), plus one ``summary.csv`` for the
run. INPUTS may be image files, folders (their images) or ``simulated`` / ``simulated:SEED``
(a simulated smear). ``--model NAME`` picks a shipped model (docs/models.md); without it the
shipped default is used. ``--detector``/``--classifier`` take checkpoints of your own.

``--processes`` analysing processes (default: one per CPU core) take turns on groups of
``--images-per-batch`` images; in each, images stream through a DataLoader (``--workers``
reader processes), each image's regions are classified in batches of ``--batch-size``, and each
image's files are written atomically as soon as it is done. Running the same command again
skips each image already done, and unreadable files that have not changed, without loading
the models when nothing is left (a crashed or stopped run continues; ``--overwrite`` redoes
everything); ``summary.csv`` is rebuilt at the end of every run. See
``napari_sickle.analysis.batch``. Images above ``--max-pixels`` (default 50 megapixels) are
refused unread; inputs inside the output folder are never read.

Bad input or environment problems (a missing input, an unwritable or full output folder, a bad
checkpoint) end with one line on stderr and exit code 2 (``--debug``: the traceback too), as
does a run in which no input could be analysed; Ctrl-C or SIGTERM ends with one line and exit
code 130, and the same command continues. docs/reliability.md lists every case.

Beyond one machine, launch it with ``torchrun`` (e.g. ``torchrun --nnodes 4 --nproc-per-node 1
--rdzv-backend c10d --rdzv-endpoint HOST:29400 -m napari_sickle.analyze /shared/smears --out
/shared/results``): each rank analyses the groups ``g % WORLD_SIZE == RANK`` into the shared
output folder (with its own analysing processes), and rank 0 writes ``summary.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from ..analysis.batch import list_inputs
from ..constants import DEVICES
from ._common import debug_requested, on_sigterm


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m napari_sickle.analyze",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("inputs", nargs="+", help="image files, folders, or 'simulated[:SEED]'")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--device", default="auto", choices=DEVICES)
    ap.add_argument(
        "--model", default=None, help="shipped RBC model name (default: the shipped default; see docs/models.md)"
    )
    ap.add_argument("--detector", default=None, help="detector checkpoint or shipped model name (overrides --model)")
    ap.add_argument(
        "--classifier", default=None, help="classifier checkpoint or shipped model name (overrides --model)"
    )
    ap.add_argument("--score-threshold", type=float, default=0.5)
    ap.add_argument("--nms-iou", type=float, default=0.5)
    ap.add_argument("--type-threshold", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=64, help="regions per classifier batch (default 64)")
    ap.add_argument(
        "--images-per-batch",
        type=int,
        default=4,
        help="consecutive images that form one unit of work for a process or rank (default 4)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader reader processes (default: none on up to 2 cores, else cores - 2, at most 4; 0 = read in this process)",
    )
    ap.add_argument(
        "--processes",
        type=int,
        default=None,
        help="analysing processes, each with its own models (default: one per CPU core, at most 8 "
        "and as many as the free memory holds at ~1.6 GB each plus ~90 bytes per pixel of the "
        "largest image; 1 on a GPU)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads of each analysing process (default: cores / processes)",
    )
    ap.add_argument("--no-overlay", action="store_true", help="do not write the overlay PNGs")
    ap.add_argument("--overwrite", action="store_true", help="redo every image (default: skip images already done)")
    ap.add_argument(
        "--max-pixels",
        type=float,
        default=None,
        help="largest image analysed, in pixels (default: NAPARI_SICKLE_MAX_PIXELS or 50e6); "
        "larger ones are refused unread",
    )
    ap.add_argument("--debug", action="store_true", help="show full tracebacks")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    debug = debug_requested(args)
    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not in the main thread
        pass
    try:
        return _main(args)
    except KeyboardInterrupt:
        _close_bars()
        print(
            f"error: stopped; run the same command again to continue with the images not done yet "
            f"(results so far are in {args.out})",
            file=sys.stderr,
            flush=True,
        )
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure ends with one line
        from ..analysis.batch import InputError
        from ..models.checkpoint import CheckpointError

        _close_bars()
        user = isinstance(exc, (OSError, CheckpointError, InputError))
        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
            text = f"{exc.filename}: {text}"
        print(f"error: {text if user else type(exc).__name__ + ': ' + text}", file=sys.stderr, flush=True)
        if debug:
            import traceback

            traceback.print_exc()
        return 2 if user else 1


def _close_bars() -> None:
    """Close open progress bars, so that the error line starts a line of its own."""
    try:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", [])):
            bar.close()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def _check_out(out, inputs_args) -> str | None:
    """Why ``out`` cannot be the output folder (None if it can): an existing file, one of the
    input folders (unless it is already an output folder), or a folder that cannot be created
    or written."""
    from pathlib import Path

    from .._atomic import atomic_write

    out = Path(out)
    if out.exists() and not out.is_dir():
        return f"--out {out} is an existing file, not a folder"
    from ..analysis.batch import STATE_DIR

    for it in inputs_args:
        p = Path(it)
        # an output folder of an earlier run given as an input (``analyze in/* --out in/out``)
        # is left out of the inputs; a folder of smears is refused as the output folder
        if p.is_dir() and p.resolve() == out.resolve() and not (out / STATE_DIR).is_dir():
            return (
                f"--out {out} is the input folder {it}; the results would mix with the smears, "
                "choose another output folder"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = atomic_write(out / f".sickle-write-test-{os.getpid()}", lambda p: p.write_bytes(b"ok"))
        probe.unlink(missing_ok=True)
    except OSError as exc:
        return f"cannot write to the output folder {out} ({exc.strerror or exc})"
    return None


def _main(args) -> int:
    from pathlib import Path

    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
    for flag in ("batch_size", "images_per_batch"):
        if getattr(args, flag) < 1:
            print(f"error: --{flag.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if args.processes is not None and args.processes < 1:
        print("error: --processes must be at least 1", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 0:
        print("error: --workers must be 0 or more", file=sys.stderr)
        return 2
    from ..analysis.batch import max_pixels

    args.max_pixels = max_pixels(None if args.max_pixels is None else int(args.max_pixels))
    missing_arg = next(
        (it for it in args.inputs if not (it == "simulated" or it.startswith("simulated:")) and not Path(it).exists()),
        None,
    )
    if missing_arg is not None:
        print(f"error: no such file or folder: {missing_arg}", file=sys.stderr)
        return 2
    why = _check_out(args.out, args.inputs)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    inputs = list_inputs(args.inputs, exclude=args.out)
    missing = [str(src) for _, src in inputs if not isinstance(src, tuple) and not Path(src).exists()]
    if missing:
        print(f"error: no such file or folder: {missing[0]}", file=sys.stderr)
        return 2
    if not inputs:
        print("no input images found", file=sys.stderr)
        return 2

    from ..training import distributed as dist

    if dist.launched_by_torchrun():
        dist.init_from_env(args.device)
    try:
        return _analyze(args, inputs, dist)
    except BaseException:
        dist.cleanup(success=False)
        raise


def _analyze(args, inputs, dist) -> int:
    """The analysis; under ``torchrun`` each rank does the groups ``g % WORLD_SIZE == RANK``
    (a shared output folder), rank 0 loads (or trains) the default models first and writes
    ``summary.csv`` once every rank is done."""
    import os
    from pathlib import Path

    from tqdm import tqdm

    from ..analysis.batch import analyze_batch, default_processes, pending

    main_rank, world = dist.is_main(), dist.world_size()
    if world == 1 and not pending(
        inputs, Path(args.out), images_per_batch=args.images_per_batch, overwrite=args.overwrite
    ):
        return _report(
            args,
            inputs,
            dist,
            analyze_batch(inputs, Path(args.out), None, max_pixels=args.max_pixels, device=args.device),
            world,
        )  # nothing left: no model
    models, err = _load_models(args, dist)
    if err is not None:
        _close_bars()
        print(f"error: {err}", file=sys.stderr)
        dist.cleanup(success=False)
        return 2
    processes = args.processes
    if processes is None and dist.world_size() > 1:  # ranks on one node share its cores
        processes = max(1, default_processes(args.device) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    bar = tqdm(total=len(inputs), desc="analyze", unit="image", disable=not main_rank)

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    rep = analyze_batch(
        inputs,
        Path(args.out),
        models,
        score_threshold=args.score_threshold,
        nms_iou=args.nms_iou,
        type_threshold=args.type_threshold,
        batch_size=args.batch_size,
        images_per_batch=args.images_per_batch,
        num_workers=args.workers,
        processes=processes,
        threads=args.threads,
        device=args.device,
        overlay=not args.no_overlay,
        overwrite=args.overwrite,
        shard=(dist.rank(), dist.world_size()),
        max_pixels=args.max_pixels,
        summary=dist.world_size() == 1,
        progress=progress,
    )
    bar.close()
    return _report(args, inputs, dist, rep, world)


def _load_models(args, dist):
    """``(models, None)``, or ``(None, one-line error)`` on every rank when one rank cannot load
    them; rank 0 loads first, the other ranks once it has checked the models."""
    from tqdm import tqdm

    from ..models.checkpoint import CheckpointError
    from ..models.registry import load_models
    from ..models.zoo import ModelFileError

    bar_state = {}

    def train_progress(stage, done, total):
        bar = bar_state.get(stage)
        if bar is None:
            bar = bar_state[stage] = tqdm(total=total, desc=stage, leave=False)
        bar.n = done
        bar.refresh()

    def load():
        try:
            return load_models(
                args.detector, args.classifier, device=args.device, progress=train_progress, model=args.model
            ), None
        except (FileNotFoundError, CheckpointError, ModelFileError) as exc:
            return None, " ".join(str(exc).split())

    main_rank = dist.is_main()
    models, err = load() if main_rank else (None, None)
    err = dist.broadcast(err)  # the other ranks load once rank 0 has checked the models
    if err is None and not main_rank:
        models, err = load()
    err = next((e for e in dist.gather(err) if e), None)  # every rank stops if one cannot load
    if err is None:
        for b in bar_state.values():
            b.close()
    return models, err


def _report(args, inputs, dist, rep, world) -> int:
    """Print the skipped files and the JSON report (rank 0; the totals of every rank under
    ``torchrun``); exit code 2 when no input could be analysed."""
    from pathlib import Path

    from ..analysis.batch import write_summary

    main_rank = dist.is_main()  # asked before cleanup: afterwards every process looks like rank 0
    for i, err in rep.errors.items():
        print(f"skipped unreadable {inputs[i][1]}: {err}", file=sys.stderr)
    if world > 1:  # totals over the ranks; rank 0 writes the summary of all images
        errors = {}
        for part in dist.gather(rep.errors):
            errors.update(part)
        sums = dist.reduce_sums(
            {k: getattr(rep, k) for k in ("total", "analyzed", "skipped_done", "unreadable", "regions", "processes")}
        )
        seconds = max(dist.gather(rep.seconds))
        if main_rank:
            for k, v in sums.items():
                setattr(rep, k, int(v))
            rep.seconds, rep.errors = seconds, errors
            rep.summary = str(write_summary(Path(args.out), inputs, errors))
        dist.cleanup(success=True)
        if not main_rank:
            return 0
    print(json.dumps({"summary": rep.summary, "images": len(inputs), **rep.as_dict(), "ranks": world}))
    if rep.analyzed + rep.skipped_done == 0:
        print(f"error: none of the {len(inputs)} input image(s) could be analysed (see {rep.summary})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from ..training.distributed import exit_process

    exit_process(main())
