"""The rule-based cell split of a smear's regions: host (scikit-image) against batched torch.

    python benchmarks/bench_cell_split.py [--device cpu|cuda] [--threads 2] [--seeds 2026 2027]
                                          [--repeats 3] [--regions detector|truth]

For each held-out simulated 1920x1080 smear (``napari_sickle.data.simulate.simulate_smear``)
it takes the regions the shipped default detector finds (``analyze_smear``, as
benchmarks/bench_analyze.py does; ``--regions truth``: the simulator's connected regions
instead) and prints one JSON object with, per smear:

* ``host_s``: the scikit-image split of all regions (``models.cells.split_cells`` on
  ``models.crops.split_workers`` threads, as the crop path runs it);
* ``torch_s``: ``models.cells_torch.split_windows`` on ``--device`` (image copied there,
  labels back on the host; the device synchronised by that copy back);
* ``cuts_host_s`` / ``cuts_torch_s``: the whole host part of the crop path
  (``models.crops.cell_cuts``) with each backend;
* ``torch_ops``: torch operator calls of one torch split (counted with a dispatch mode; on
  CUDA most are kernel launches, so this bounds the split's time from below) and ``batches``:
  how many padded batches the regions made on that device;
* agreement of the torch labels with the host labels: the share of regions with the same
  number of cells, the share with identical labels, and the mean (and 5th percentile) over the
  host's cells of the IoU of the best-matching torch cell.

``--cuda-form`` runs the torch split here as it runs on CUDA (its batching and its
``conv2d`` / ``max_pool2d`` forms), to count the operators a GPU would launch without one.

With ``--patches N``: the same agreement figures on ``N`` composed patches of 2-4 cells per
seed of ``--patch-seeds`` (``data.compose.compose_patches`` from six crops of each
``$SICKLE_DATA/sickle-rbc`` class folder, as tests/test_cells_torch.py makes them).

Medians of ``--repeats`` runs after a warm-up; the load average before and after.
:func:`compare_split` is also used by benchmarks/device_check.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np


def matched_iou(ref, lab) -> list[float]:
    """For each cell of ``ref``, the IoU of the best-overlapping cell of ``lab`` (0 if none)."""
    out = []
    for c in range(1, int(ref.max()) + 1):
        m = ref == c
        ious = [(m & (lab == d)).sum() / (m | (lab == d)).sum() for d in range(1, int(lab.max()) + 1)]
        out.append(float(max(ious, default=0.0)))
    return out


def _median_time(fn, repeats: int, sync=None):
    fn()  # warm-up
    ts, out = [], None
    for _ in range(max(1, repeats)):
        if sync:
            sync()
        t = time.perf_counter()
        out = fn()
        if sync:
            sync()
        ts.append(time.perf_counter() - t)
    return out, statistics.median(ts)


def _op_count(img, windows, p, dev) -> dict:
    """Torch operator calls of one :func:`split_windows` and its number of batches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from napari_sickle.models import cells_torch as ct

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        ct.split_windows(img, windows, p, dev)
    win = np.asarray(windows).reshape(-1, 4)
    return {"torch_ops": Count.n, "batches": len(ct._groups(win[:, 3] - win[:, 1], win[:, 2] - win[:, 0], dev, None))}


def compare_split(image, boxes, device="cpu", repeats: int = 3, params=None, min_side: int = 112) -> dict:
    """Times and agreement of the host and the torch cell split of ``boxes`` of ``image``."""
    import torch

    from napari_sickle.models.cells import DEFAULT_SPLIT, split_cells
    from napari_sickle.models.cells_torch import split_windows
    from napari_sickle.models.crops import _region_window, cell_cuts, split_workers

    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else None
    p = {**DEFAULT_SPLIT, **(params or {})}
    img = np.ascontiguousarray(np.asarray(image)[..., :3])
    H, W = img.shape[:2]
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    windows = [_region_window(b, H, W, int(p["margin"])) for b in boxes]
    regions = [img[y0:y1, x0:x1] for x0, y0, x1, y1 in windows]
    n = split_workers(len(regions))

    def host():
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(n) as ex:
            return list(ex.map(lambda r: split_cells(r, p), regions))

    ref, host_s = _median_time(host, repeats)
    labs, torch_s = _median_time(lambda: split_windows(img, windows, p, dev), repeats, sync)
    cuts_h, cuts_host_s = _median_time(lambda: cell_cuts(img, boxes, min_side, p, backend="skimage"), repeats)
    cuts_t, cuts_torch_s = _median_time(
        lambda: cell_cuts(img, boxes, min_side, p, backend="torch", device=dev), repeats, sync
    )
    ious = [v for a, b in zip(ref, labs) for v in matched_iou(a, b)]
    return {
        **_op_count(img, windows, p, dev),
        "regions": len(regions),
        "host_cells": int(sum(int(a.max()) for a in ref)),
        "torch_cells": int(sum(int(b.max()) for b in labs)),
        "host_threads": n,
        "host_s": round(host_s, 4),
        "torch_s": round(torch_s, 4),
        "cuts_host_s": round(cuts_host_s, 4),
        "cuts_torch_s": round(cuts_torch_s, 4),
        "cuts": [len(cuts_h[0]), len(cuts_t[0])],
        "same_count": round(float(np.mean([a.max() == b.max() for a, b in zip(ref, labs)])), 4) if ref else None,
        "identical": round(float(np.mean([np.array_equal(a, b) for a, b in zip(ref, labs)])), 4) if ref else None,
        "mean_matched_iou": round(float(np.mean(ious)), 4) if ious else None,
        "p5_matched_iou": round(float(np.percentile(ious, 5)), 4) if ious else None,
    }


def patch_agreement(n: int, seeds) -> list[dict]:
    """Host against torch split on composed multi-cell patches (six crops per class folder)."""
    import shutil
    import tempfile
    import warnings
    from pathlib import Path

    from napari_sickle._paths import sickle_data_dir
    from napari_sickle.data.compose import compose_patches, load_crops
    from napari_sickle.models.cells import split_cells
    from napari_sickle.models.cells_torch import split_regions

    src, out = Path(sickle_data_dir()) / "sickle-rbc", []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for folder in sorted(f for f in src.iterdir() if f.is_dir()):
            (Path(tmp) / folder.name).mkdir()
            for f in sorted(folder.iterdir())[:6]:
                shutil.copy(f, Path(tmp) / folder.name / f.name)
        crops = load_crops(tmp)
    for seed in seeds:
        imgs = [it[0] for it in compose_patches(crops, n, seed=seed, min_cells=2, max_cells=4)]
        ref, labs = [split_cells(im) for im in imgs], split_regions(imgs)
        ious = [v for a, b in zip(ref, labs) for v in matched_iou(a, b)]
        out.append(
            {
                "seed": seed,
                "patches": n,
                "same_count": round(float(np.mean([a.max() == b.max() for a, b in zip(ref, labs)])), 4),
                "mean_matched_iou": round(float(np.mean(ious)), 4),
                "min_matched_iou": round(float(np.min(ious)), 4),
            }
        )
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (also the host split's threads)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[2026, 2027])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--regions", default="detector", choices=("detector", "truth"))
    ap.add_argument("--patches", type=int, default=0, help="composed patches per seed (0: none)")
    ap.add_argument("--cuda-form", action="store_true", help="the torch split's CUDA batching and operators, here")
    ap.add_argument("--patch-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    import torch

    torch.set_num_threads(args.threads)
    from napari_sickle.data.simulate import simulate_smear

    if args.cuda_form:
        from napari_sickle.models import cells_torch as ct

        ct._on_cuda = lambda x: True
        ct._groups = lambda hs, ws, dev, budget: ct.size_groups(hs, ws, ct.BATCH_PIXELS_CUDA, ct.BATCH_RATIO_CUDA)
    models = None
    if args.regions == "detector":
        from napari_sickle.models.registry import load_models

        models = load_models(None, None, device="cpu")
    out = {"device": args.device, "threads": args.threads, "regions": args.regions, "cuda_form": args.cuda_form}
    out["smears"] = []
    for seed in args.seeds:
        sm = simulate_smear(seed=seed)
        if models is not None:
            from napari_sickle.analysis.smear import analyze_smear

            boxes = analyze_smear(sm.image, models, device="cpu").boxes
        else:
            boxes = sm.regions[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
        out["smears"].append({"seed": seed, **compare_split(sm.image, boxes, args.device, args.repeats)})
    if args.patches:
        out["patches"] = patch_agreement(args.patches, args.patch_seeds)
    out["load_average_before"] = [round(x, 2) for x in load_before]
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
