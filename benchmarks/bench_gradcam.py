"""Grad-CAM timing on this CPU: one 224x224 cell with ResNet-50, and 64 cells batched vs
one by one, measured in the same run.

    python benchmarks/bench_gradcam.py [--threads 2] [--repeats 5] [--batch-size 16]

Weights do not matter for timing: ResNet-50 is randomly initialised unless torchvision's
cache holds its ImageNet file. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-cells", type=int, default=64)
    args = ap.parse_args(argv)

    import torch

    from napari_sickle.analysis.bm import explain
    from napari_sickle.models.bm import build_bm_model

    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_bm_model("resnet50")  # 21 Matek classes, 224x224
    rng = np.random.default_rng(0)
    cell = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
    cells = list(rng.integers(0, 255, (args.n_cells, 224, 224, 3), dtype=np.uint8))

    def timed(fn, repeats):
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return ts

    def note(key, value):  # partial results survive a time limit
        print(json.dumps({key: value}), flush=True)

    explain([cell], model, device="cpu", faithfulness=None)  # warm-up
    one = timed(lambda: explain([cell], model, device="cpu", faithfulness=None), args.repeats)
    note("one_cell_gradcam_s_all", one)
    one_f = timed(lambda: explain([cell], model, device="cpu"), args.repeats)
    note("one_cell_gradcam_plus_faithfulness_s_all", one_f)
    batched = timed(lambda: explain(cells, model, device="cpu", batch_size=args.batch_size, faithfulness=None), 1)[0]
    note("batched_s", batched)
    single = timed(lambda: [explain([c], model, device="cpu", faithfulness=None) for c in cells], 1)[0]
    out = {
        "machine": f"{platform.processor() or platform.machine()}, torch threads {args.threads}",
        "torch": torch.__version__,
        "one_cell_gradcam_s_median": statistics.median(one),
        "one_cell_gradcam_s_all": [round(t, 3) for t in one],
        "one_cell_gradcam_plus_faithfulness_s_median": statistics.median(one_f),
        f"{args.n_cells}_cells_batched_s": batched,
        "batch_size": args.batch_size,
        f"{args.n_cells}_cells_one_by_one_s": single,
        "speedup_batched": single / batched,
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
