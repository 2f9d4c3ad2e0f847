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
"""
from __future__ import annotations

import argparse
import json
import sys

from .analysis.batch import IMAGE_SUFFIXES, list_inputs, load_image, overlay_png  # noqa: F401 (public names)


def _inputs(items):
    yield from list_inputs(items)


def _load(src):
    return load_image(src)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m napari_sickle.analyze", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="image files, folders, or 'simulated[:SEED]'")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
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

    from tqdm import tqdm

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

    from .analysis.batch import analyze_batch
    from .models.checkpoint import CheckpointError
    from .models.registry import load_models

    bar_state = {}

    def train_progress(stage, done, total):
        bar = bar_state.get(stage)
        if bar is None:
            bar = bar_state[stage] = tqdm(total=total, desc=stage, leave=False)
        bar.n = done
        bar.refresh()

    try:
        models = load_models(args.detector, args.classifier, device=args.device, progress=train_progress,
                             allow_train=not args.no_train)
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for b in bar_state.values():
        b.close()
    bar = tqdm(total=len(inputs), desc="analyze", unit="image")

    def progress(done, total):
        bar.n = done
        bar.refresh()

    rep = analyze_batch(inputs, Path(args.out), models, score_threshold=args.score_threshold, nms_iou=args.nms_iou,
                        type_threshold=args.type_threshold, batch_size=args.batch_size,
                        images_per_batch=args.images_per_batch, num_workers=args.workers, processes=args.processes,
                        threads=args.threads, device=args.device,
                        overlay=not args.no_overlay, overwrite=args.overwrite, progress=progress)
    bar.close()
    for i, err in rep.errors.items():
        print(f"skipped unreadable {inputs[i][1]}: {err}", file=sys.stderr)
    print(json.dumps({"summary": rep.summary, "images": rep.total, **rep.as_dict()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
