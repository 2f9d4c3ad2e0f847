"""Benchmark and accuracy check of the RBC analysis with the default (or given) models.

    python benchmarks/bench_analyze.py [--threads 2] [--interop-threads 1] [--repeats 3] [--seeds 2026 2027]
                                       [--detector D.pt --classifier C.pt] [--crop-path batched|per-region]
                                       [--recipe accurate --compare-regions 40] [--tune-malloc] [--profile]
                                       [--no-fuse] [--no-channels-last] [--compare-fuse]

On held-out simulated 1920x1080 smears (seeds never used for training) it prints one JSON
object with: end-to-end seconds of ``analyze_smear`` (median of --repeats), batched vs
one-region-at-a-time classification of the same regions in the same run, peak resident memory
of the process, region recall/precision at IoU 0.5, and agreement of the predicted types with
the truth (exact match, per-type accuracy, mean AUC) next to a chance baseline.

``--crop-path`` picks how the classifier's inputs are made (models/crops.py: batched on the
device, or the per-region host path); the JSON also has both paths timed on the same regions.
``--recipe accurate`` swaps in a classifier of the accurate recipe (cell split, 8 views, 160
px, avgmax-s4) with untrained heads (times only; its type figures mean nothing) and compares
the paths on the first ``--compare-regions`` regions. ``--tune-malloc`` applies
``napari_sickle._malloc.tune_malloc`` first. The load average is recorded before and after.
The JSON also has the cell split's time on each smear's regions (``models.crops.cell_cuts``,
on torch's thread count and on one thread). ``--profile`` adds a ``torch.profiler`` run (CPU;
CUDA too on a GPU) over one ``analyze_smear`` call of the first smear: wall time, time inside
torch operators, the batch-norm operators' self time and the top operators by self time
(``--profile-top``).

The models are loaded as the analysis loads them (``models.registry.load_models``: batch norm
folded into the convolutions, channels_last weights); ``--no-fuse`` / ``--no-channels-last``
load them without. ``--compare-fuse`` also loads the unfolded NCHW pair and the folded NCHW
pair and times ``analyze_smear`` with all three in turn (A, B, C, A, B, C, ...), same smears,
same run, with the largest probability difference to the main models on matched regions.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import numpy as np


def iou_matrix(a, b):
    """Pairwise IoU of (N, 4) and (M, 4) x_min, y_min, x_max, y_max boxes (torchvision's box_iou)."""
    import torch
    from torchvision.ops import box_iou

    a = torch.as_tensor(np.asarray(a, float).reshape(-1, 4))
    b = torch.as_tensor(np.asarray(b, float).reshape(-1, 4))
    return box_iou(a, b).numpy()


def split_times(clf, image, boxes) -> dict:
    """Seconds of the cell split of ``boxes`` (``models.crops.cell_cuts``) on torch's thread
    count and on one thread, and the number of cells found."""
    import torch

    from napari_sickle.models.crops import cell_cuts

    min_side, params = int(clf.config.get("min_side", 112)), clf.config.get("cell_split")
    out = {}
    for label, workers in (("threads_%d" % torch.get_num_threads(), None), ("one_thread", 1)):
        t = time.perf_counter()
        cuts, _, _ = cell_cuts(image, boxes, min_side, params, workers=workers)
        out[label] = round(time.perf_counter() - t, 3)
    out["cells"] = len(cuts)
    return out


def profile(models, image, device, top: int = 12) -> dict:
    """``torch.profiler`` over one ``analyze_smear`` call: wall seconds, seconds inside
    top-level torch operators (the rest is Python, NumPy, SciPy and scikit-image) and the top
    operators by self time."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from napari_sickle.analysis.smear import analyze_smear

    cuda = torch.device(device).type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with tprofile(activities=acts) as prof:
        t = time.perf_counter()
        analyze_smear(image, models, device=device)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
    ev = prof.key_averages()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    top_level = [e for e in prof.events() if e.cpu_parent is None]
    bn = [e for e in ev if "batch_norm" in e.key]
    return {
        "wall_s": round(wall, 3),
        "torch_ops_s": round(sum(e.cpu_time_total for e in top_level) / 1e6, 3),
        "operator_calls": int(sum(e.count for e in ev)),
        "batch_norm_calls": int(sum(e.count for e in bn)),
        "batch_norm_self_ms": round(sum(getattr(e, key, 0) or 0 for e in bn) / 1e3, 1),
        "top": [
            {"name": e.key, "calls": e.count, "self_ms": round(getattr(e, key, 0) / 1e3, 1)}
            for e in sorted(ev, key=lambda e: getattr(e, key, 0) or 0, reverse=True)[:top]
        ],
    }


def load_variants(args, load_models) -> dict:
    """The main models (as the analysis loads them, unless --no-fuse / --no-channels-last) and,
    with --compare-fuse, the unfolded NCHW and folded NCHW pairs."""
    kw = dict(device=args.device, model=args.model)
    out = {
        "main": load_models(
            args.detector, args.classifier, fuse=not args.no_fuse, channels_last=not args.no_channels_last, **kw
        )
    }
    if args.compare_fuse:
        out["unfolded_nchw"] = load_models(args.detector, args.classifier, fuse=False, channels_last=False, **kw)
        out["folded_nchw"] = load_models(args.detector, args.classifier, fuse=True, channels_last=False, **kw)
    return out


def timed_runs(variants: dict, img, repeats: int, device) -> tuple[dict, dict]:
    """Seconds of ``analyze_smear`` per variant (a warm-up each, then ``repeats`` rounds taking
    the variants in turn) and each variant's last result."""
    from napari_sickle.analysis.smear import analyze_smear

    for m in variants.values():
        analyze_smear(img, m, device=device)  # warm-up
    times = {k: [] for k in variants}
    last = {}
    for _ in range(repeats):
        for k, m in variants.items():
            t = time.perf_counter()
            last[k] = analyze_smear(img, m, device=device)
            times[k].append(time.perf_counter() - t)
    return times, last


def fuse_comparison(times: dict, last: dict) -> dict:
    """Median and all times per variant, and each variant's regions and largest probability
    difference to the main models (regions matched by IoU)."""
    ref = last["main"]
    out = {}
    for k, v in times.items():
        row = {"median_s": round(statistics.median(v), 3), "all_s": [round(x, 3) for x in v]}
        res = last[k]
        row["regions"] = int(len(res))
        if k != "main" and len(res) and len(ref):
            j = iou_matrix(ref.boxes, res.boxes).argmax(axis=1)
            row["max_abs_prob_diff_vs_main"] = float(np.abs(ref.probs - res.probs[j]).max())
        out[k] = row
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[2026, 2027])
    ap.add_argument("--model", default=None, help="shipped RBC model name (default: the shipped default)")
    ap.add_argument("--detector", default=None)
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--interop-threads", type=int, default=None, help="torch.set_num_interop_threads")
    ap.add_argument("--crop-path", default="batched", choices=("batched", "per-region"))
    ap.add_argument("--recipe", default="model", choices=("model", "accurate"))
    ap.add_argument(
        "--compare-regions",
        type=int,
        default=0,
        help="regions for the one-at-a-time and crop-path comparisons (0: all)",
    )
    ap.add_argument("--tune-malloc", action="store_true")
    ap.add_argument("--profile", action="store_true", help="torch.profiler over one analyze_smear call")
    ap.add_argument("--profile-top", type=int, default=12)
    ap.add_argument("--no-fuse", action="store_true", help="keep batch norm separate (load_models(fuse=False))")
    ap.add_argument("--no-channels-last", action="store_true", help="NCHW weights (load_models(channels_last=False))")
    ap.add_argument(
        "--compare-fuse", action="store_true", help="also time unfolded NCHW and folded NCHW models in turn"
    )
    args = ap.parse_args(argv)
    import os

    load_before = os.getloadavg()
    if args.tune_malloc:
        from napari_sickle._malloc import tune_malloc

        tune_malloc()
    import torch
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(args.threads)
    if args.interop_threads:
        torch.set_num_interop_threads(args.interop_threads)
    from napari_sickle.constants import RBC_TYPES
    from napari_sickle.data.simulate import simulate_smear
    from napari_sickle.models.registry import load_models

    t = time.perf_counter()
    variants = load_variants(args, load_models)
    models = variants["main"]
    if args.recipe == "accurate":
        from napari_sickle.models.multilabel import new_classifier

        for m in variants.values():
            m.classifier = new_classifier(pretrained=True, device=args.device)
    for m in variants.values():
        m.classifier.crop_path = args.crop_path
    load_s = time.perf_counter() - t
    out = {
        "threads": args.threads,
        "interop_threads": torch.get_num_interop_threads(),
        "device": args.device,
        "crop_path": args.crop_path,
        "recipe": args.recipe,
        "tune_malloc": args.tune_malloc,
        "fuse": not args.no_fuse,
        "channels_last": not args.no_channels_last,
        "load_average_before": [round(x, 2) for x in load_before],
        "model_load_seconds": round(load_s, 2),
        "detector": models.detector_path,
        "classifier": models.classifier_path,
        "detector_arch": models.detector.config["arch"],
        "detector_scale": models.detector.config["scale"],
        "classifier_backbone": models.classifier.config["backbone"],
        "classifier_input_size": models.classifier.input_size,
        "smears": [],
    }
    all_true, all_prob, all_pred = [], [], []
    n_gt_tot = n_found_tot = n_det_tot = n_tp_tot = 0
    for seed in args.seeds:
        sm = simulate_smear(seed=seed)
        img = sm.image
        all_times, last = timed_runs(variants, img, args.repeats, args.device)
        times, res = all_times["main"], last["main"]
        # batched vs one region at a time, same regions, same run
        clf = models.classifier
        cmp_boxes = res.boxes[: args.compare_regions] if args.compare_regions else res.boxes
        t = time.perf_counter()
        p_batched = clf.predict_boxes(img, cmp_boxes, batch_size=64)
        batched_s = time.perf_counter() - t
        t = time.perf_counter()
        p_single = np.concatenate(
            [clf.predict_boxes(img, cmp_boxes[i : i + 1], batch_size=1) for i in range(len(cmp_boxes))]
        )
        single_s = time.perf_counter() - t
        paths = {}
        for path in ("batched", "per-region"):  # the two crop paths, same regions, batched classification
            clf.crop_path = path
            t = time.perf_counter()
            crops, _ = clf.region_crops(img, cmp_boxes)
            crops_s = time.perf_counter() - t
            t = time.perf_counter()
            paths[path] = clf.predict_boxes(img, cmp_boxes, batch_size=64)
            paths[path + "_seconds"] = {
                "crops": round(crops_s, 3),
                "classify": round(time.perf_counter() - t, 3),
                "inputs": int(len(crops)),
            }
        clf.crop_path = args.crop_path
        split = split_times(clf, img, res.boxes) if clf.split == "cells" else None
        if args.profile and "profile" not in out:
            out["profile"] = profile(models, img, args.device, args.profile_top)
        gt = sm.regions[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
        ytrue = sm.regions[list(RBC_TYPES)].to_numpy(int)
        iou = iou_matrix(gt, res.boxes)
        found = iou.max(axis=1) >= 0.5 if len(res) else np.zeros(len(gt), bool)
        tp = iou.max(axis=0) >= 0.5 if len(res) else np.zeros(0, bool)
        # type agreement on matched regions (each truth region -> its best detection)
        m_gt = np.where(found)[0]
        m_det = iou[m_gt].argmax(axis=1)
        all_true.append(ytrue[m_gt])
        all_prob.append(res.probs[m_det])
        all_pred.append(res.labels[m_det])
        n_gt_tot += len(gt)
        n_found_tot += int(found.sum())
        n_det_tot += len(res)
        n_tp_tot += int(tp.sum())
        out["smears"].append(
            {
                "seed": seed,
                "n_cells": int(sm.n_cells),
                "n_regions_truth": int(len(gt)),
                "n_regions_found": int(len(res)),
                "recall_iou50": float(found.mean()),
                "precision_iou50": float(tp.mean()) if len(tp) else None,
                "end_to_end_seconds_median": round(statistics.median(times), 3),
                "end_to_end_seconds_all": [round(x, 3) for x in times],
                "stage_seconds": {k: round(v, 3) for k, v in res.timings.items()},
                "classify_batched_seconds": round(batched_s, 3),
                "classify_one_at_a_time_seconds": round(single_s, 3),
                "batched_speedup": round(single_s / max(batched_s, 1e-9), 1),
                "batched_equals_single": bool(np.allclose(p_batched, p_single, atol=1e-4)),
                "compared_regions": int(len(cmp_boxes)),
                "cell_split_seconds": split,
                "fuse_compare": fuse_comparison(all_times, last) if args.compare_fuse else None,
                "crop_paths": {
                    "batched": paths["batched_seconds"],
                    "per_region": paths["per-region_seconds"],
                    "max_abs_prob_diff": float(np.abs(paths["batched"] - paths["per-region"]).max())
                    if len(cmp_boxes)
                    else 0.0,
                },
            }
        )
    yt, yp, yl = np.concatenate(all_true), np.concatenate(all_prob), np.concatenate(all_pred)
    prev = yt.mean(axis=0)
    aucs = [roc_auc_score(yt[:, j], yp[:, j]) for j in range(6) if 0 < yt[:, j].sum() < len(yt)]
    out["detection"] = {
        "recall_iou50": n_found_tot / max(n_gt_tot, 1),
        "precision_iou50": n_tp_tot / max(n_det_tot, 1),
        "n_truth": n_gt_tot,
        "n_found": n_det_tot,
    }
    out["types"] = {
        "n_matched_regions": int(len(yt)),
        "exact_match": float(np.mean(np.all(yl == yt, axis=1))),
        "chance_exact_match": float(np.prod(prev**2 + (1 - prev) ** 2)),
        "per_type_accuracy": {t: float(np.mean(yl[:, j] == yt[:, j])) for j, t in enumerate(RBC_TYPES)},
        "per_type_majority_baseline": {t: float(max(prev[j], 1 - prev[j])) for j, t in enumerate(RBC_TYPES)},
        "mean_auc": float(np.mean(aucs)) if aucs else None,
    }
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
