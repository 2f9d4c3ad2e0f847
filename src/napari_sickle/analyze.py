"""Batch RBC analysis: ``python -m napari_sickle.analyze INPUTS... --out DIR``.

For each input image writes ``<stem>_regions.csv`` (regions CSV schema) and
``<stem>_overlay.png`` (boxes: red = abnormal, green = normal), plus one ``summary.csv``
for the run. INPUTS may be image files, folders (their images) or ``simulated`` / ``simulated:SEED``
(a simulated smear). Without ``--detector``/``--classifier`` the cached default models are
used (trained on simulated smears on first use).

``--processes`` analysing processes (default: one per CPU core) share the images; in each,
images stream through a DataLoader (``--workers`` reader processes), the regions of
``--images-per-batch`` images are classified together in batches of ``--batch-size``, and each
image's files are written atomically as soon as it is done. Running the same command again
skips the images already done (a crashed or stopped run continues; ``--overwrite`` redoes
everything); ``summary.csv`` is rebuilt at the end of every run. See
``napari_sickle.analysis.batch``.

Beyond one machine, launch it with ``torchrun`` (e.g. ``torchrun --nnodes 4 --nproc-per-node 1
--rdzv-backend c10d --rdzv-endpoint HOST:29400 -m napari_sickle.analyze /shared/smears --out
/shared/results``): each rank analyses the groups ``g % WORLD_SIZE == RANK`` into the shared
output folder (with its own analysing processes), and rank 0 writes ``summary.csv``.
"""
from __future__ import annotations

import argparse
import json
import sys

from .analysis.batch import IMAGE_SUFFIXES, list_inputs, load_image, overlay_png  # noqa: F401 (public names)
from .constants import DEVICES


def _inputs(items):
    yield from list_inputs(items)


def _load(src):
    return load_image(src)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m napari_sickle.analyze", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="image files, folders, or 'simulated[:SEED]'")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--device", default="auto", choices=DEVICES)
    ap.add_argument("--detector", default=None, help="detector checkpoint (default: cached default model)")
    ap.add_argument("--classifier", default=None, help="classifier checkpoint (default: cached default model)")
    ap.add_argument("--score-threshold", type=float, default=0.5)
    ap.add_argument("--nms-iou", type=float, default=0.5)
    ap.add_argument("--type-threshold", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=64, help="regions per classifier batch (default 64)")
    ap.add_argument("--images-per-batch", type=int, default=4,
                    help="images whose regions are classified together; also the most a crash can lose (default 4)")
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader reader processes (default: CPU cores - 1, at most 4; 0 = read in this process)")
    ap.add_argument("--processes", type=int, default=None,
                    help="analysing processes, each with its own models (default: one per CPU core, at most 8 "
                         "and as many as the free memory holds at ~1.6 GB each; 1 on a GPU)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads of each analysing process (default: cores / processes)")
    ap.add_argument("--no-overlay", action="store_true", help="do not write the overlay PNGs")
    ap.add_argument("--no-train", action="store_true", help="fail instead of training default models")
    ap.add_argument("--overwrite", action="store_true", help="redo every image (default: skip images already done)")
    args = ap.parse_args(argv)

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
    inputs = list_inputs(args.inputs)
    missing = [str(src) for _, src in inputs if not isinstance(src, tuple) and not Path(src).exists()]
    if missing:
        print(f"error: no such file or folder: {missing[0]}", file=sys.stderr)
        return 2
    if not inputs:
        print("no input images found", file=sys.stderr)
        return 2

    from .training import distributed as dist

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

    from .analysis.batch import analyze_batch, default_processes, write_summary
    from .models.checkpoint import CheckpointError
    from .models.registry import load_models

    main_rank, world = dist.is_main(), dist.world_size()
    bar_state = {}

    def train_progress(stage, done, total):
        bar = bar_state.get(stage)
        if bar is None:
            bar = bar_state[stage] = tqdm(total=total, desc=stage, leave=False)
        bar.n = done
        bar.refresh()

    def load(allow_train):
        try:
            return load_models(args.detector, args.classifier, device=args.device, progress=train_progress,
                               allow_train=allow_train), None
        except (FileNotFoundError, CheckpointError) as exc:
            return None, str(exc)

    models, err = load(not args.no_train) if main_rank else (None, None)
    err = dist.broadcast(err)  # the other ranks load once rank 0 has (possibly trained and) checked them
    if err is None and not main_rank:
        models, err = load(False)
    err = next((e for e in dist.gather(err) if e), None)  # every rank stops if one cannot load
    if err is not None:
        print(f"error: {err}", file=sys.stderr)
        dist.cleanup(success=False)
        return 2
    for b in bar_state.values():
        b.close()
    processes = args.processes
    if processes is None and dist.world_size() > 1:  # ranks on one node share its cores
        processes = max(1, default_processes(args.device) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    bar = tqdm(total=len(inputs), desc="analyze", unit="image", disable=not main_rank)

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    rep = analyze_batch(inputs, Path(args.out), models, score_threshold=args.score_threshold, nms_iou=args.nms_iou,
                        type_threshold=args.type_threshold, batch_size=args.batch_size,
                        images_per_batch=args.images_per_batch, num_workers=args.workers, processes=processes,
                        threads=args.threads, device=args.device, overlay=not args.no_overlay,
                        overwrite=args.overwrite, shard=(dist.rank(), dist.world_size()),
                        summary=dist.world_size() == 1, progress=progress)
    bar.close()
    for i, err in rep.errors.items():
        print(f"skipped unreadable {inputs[i][1]}: {err}", file=sys.stderr)
    if dist.world_size() > 1:  # totals over the ranks; rank 0 writes the summary of all images
        errors = {}
        for part in dist.gather(rep.errors):
            errors.update(part)
        sums = dist.reduce_sums({k: getattr(rep, k) for k in ("total", "analyzed", "skipped_done", "unreadable",
                                                              "regions", "processes")})
        seconds = max(dist.gather(rep.seconds))
        if main_rank:
            for k, v in sums.items():
                setattr(rep, k, int(v))
            rep.seconds, rep.errors = seconds, errors
            rep.summary = str(write_summary(Path(args.out), inputs, errors))
        dist.cleanup(success=True)
        if not main_rank:
            return 0
    print(json.dumps({"summary": rep.summary, "images": len(inputs), **rep.as_dict(),
                      "ranks": world}))
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
