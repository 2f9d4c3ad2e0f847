"""Backbone throughput with glibc's default malloc settings vs ``napari_sickle._malloc.tune_malloc``.

Each configuration runs in a fresh Python process (the settings are process-wide), timing
efficientnet-lite0 feature extraction (``pooled_features``, ``avgmax-s4``, random weights, which
cost the same as ImageNet ones) on random 160 px images, the multi-label cell input size.
Prints one JSON line per configuration: images/s, wall, user and system CPU seconds and minor
page faults during the timed passes.

    .venv/bin/python benchmarks/bench_malloc.py [--threads 2] [--images 1024] [--size 160]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def child(batch: int, size: int, images: int, threads: int, tuned: bool) -> dict:
    import resource
    import time

    if tuned:
        from napari_sickle._malloc import tune_malloc

        tune_malloc()
    import torch

    from napari_sickle.models.multilabel import make_net, pooled_features

    torch.set_num_threads(threads)
    bb = make_net("efficientnet-lite0", pretrained=False).backbone.eval()
    x = torch.randn(batch, 3, size, size)

    def usage():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime, r.ru_stime, r.ru_minflt

    with torch.inference_mode():
        pooled_features(bb, x, "avgmax-s4")  # warm-up
        u0, s0, f0 = usage()
        t0 = time.perf_counter()
        n = max(1, images // batch)
        for _ in range(n):
            pooled_features(bb, x, "avgmax-s4")
        wall = time.perf_counter() - t0
        u1, s1, f1 = usage()
    return {
        "malloc": "tuned" if tuned else "glibc default",
        "batch_images": batch,
        "size": size,
        "threads": threads,
        "images_per_s": round(n * batch / wall, 1),
        "wall_s": round(wall, 2),
        "user_s": round(u1 - u0, 2),
        "sys_s": round(s1 - s0, 2),
        "minor_faults": int(f1 - f0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--batches", default="512,64", help="images per forward pass, comma-separated")
    ap.add_argument("--child", nargs=2, metavar=("BATCH", "TUNED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.size, args.images, args.threads, args.child[1] == "1")))
        return
    env = dict(os.environ, NAPARI_SICKLE_MALLOC="")
    for batch in [int(b) for b in args.batches.split(",")]:
        for tuned in ("0", "1"):
            cmd = [
                sys.executable,
                __file__,
                "--threads",
                str(args.threads),
                "--images",
                str(args.images),
                "--size",
                str(args.size),
                "--child",
                str(batch),
                tuned,
            ]
            print(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
