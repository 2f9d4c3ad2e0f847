"""Reproduce the U-Net result of docs/segmentation.md in one command.

Trains the U-Net on BBBC041 pairs with 6 of the 24 images held back (never seen in
training or validation), then scores watershed, connected components and the U-Net on
those held-back images with the same code as ``python -m napari_sickle.evaluate segmentation``.

    .venv/bin/python benchmarks/train_unet_bbbc041.py --out runs/unet_bbbc041

SICKLE_DATA defaults to ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None):
    import torch

    from napari_sickle._paths import sickle_data_dir
    from napari_sickle.analysis.segmentation import evaluate_segmentation
    from napari_sickle.models.checkpoint import load_checkpoint
    from napari_sickle.training.unet import train_unet

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="bbbc041seg folder (default SICKLE_DATA/bbbc041seg)")
    ap.add_argument("--out", default="runs/unet_bbbc041")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--holdout", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded 2-core CPU)")
    ap.add_argument("--skip-training", action="store_true", help="only evaluate OUT/best.pt")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = Path(args.data) if args.data else sickle_data_dir() / "bbbc041seg"

    report = {}
    if not args.skip_training:
        t0 = time.perf_counter()
        res = train_unet(
            str(data),
            args.out,
            epochs=args.epochs,
            device="cpu",
            seed=0,
            holdout=args.holdout,
            log=lambda d: print(json.dumps(d), flush=True),
        )
        report["training_seconds"] = round(time.perf_counter() - t0, 1)
        report["validation"] = res["metrics"]
    best = Path(args.out) / "best.pt"
    ckpt = load_checkpoint(best, kind="unet")
    test = ckpt["recipe"]["test_images"]
    t0 = time.perf_counter()
    ev = evaluate_segmentation(
        str(data),
        unet_model=str(best),
        device="cpu",
        images=test,
        methods=["watershed", "connected_components", "unet"],
    )
    report["evaluation_seconds"] = round(time.perf_counter() - t0, 1)
    report["held_out"] = ev
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
