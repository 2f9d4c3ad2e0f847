"""Benchmark and accuracy check of the RBC analysis with the default (or given) models.

    python benchmarks/bench_analyze.py [--threads 2] [--repeats 3] [--seeds 2026 2027]
                                       [--detector D.pt --classifier C.pt]

On held-out simulated 1920x1080 smears (seeds never used for training) it prints one JSON
object with: end-to-end seconds of ``analyze_smear`` (median of --repeats), batched vs
one-region-at-a-time classification of the same regions in the same run, peak resident memory
of the process, region recall/precision at IoU 0.5, and agreement of the predicted types with
the truth (exact match, per-type accuracy, mean AUC) next to a chance baseline.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import numpy as np


def iou_matrix(a, b):
    a = np.asarray(a, float).reshape(-1, 4)
    b = np.asarray(b, float).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    aa = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    bb = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(aa[:, None] + bb[None, :] - inter, 1e-9)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[2026, 2027])
    ap.add_argument("--model", default=None, help="shipped RBC model name (default: the shipped default)")
    ap.add_argument("--detector", default=None)
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    import torch
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(args.threads)
    from napari_sickle.analysis.smear import analyze_smear
    from napari_sickle.constants import RBC_TYPES
    from napari_sickle.data.simulate import simulate_smear
    from napari_sickle.models.registry import load_models

    t = time.perf_counter()
    models = load_models(args.detector, args.classifier, device=args.device, model=args.model)
    load_s = time.perf_counter() - t
    out = {"threads": args.threads, "device": args.device, "model_load_seconds": round(load_s, 2),
           "detector": models.detector_path, "classifier": models.classifier_path,
           "detector_arch": models.detector.config["arch"], "detector_scale": models.detector.config["scale"],
           "classifier_backbone": models.classifier.config["backbone"],
           "classifier_input_size": models.classifier.input_size, "smears": []}
    all_true, all_prob, all_pred = [], [], []
    n_gt_tot = n_found_tot = n_det_tot = n_tp_tot = 0
    for seed in args.seeds:
        sm = simulate_smear(seed=seed)
        img = sm.image
        analyze_smear(img, models, device=args.device)  # warm-up
        times, res = [], None
        for _ in range(args.repeats):
            t = time.perf_counter()
            res = analyze_smear(img, models, device=args.device)
            times.append(time.perf_counter() - t)
        # batched vs one region at a time, same regions, same run
        clf = models.classifier
        t = time.perf_counter()
        p_batched = clf.predict_boxes(img, res.boxes, batch_size=64)
        batched_s = time.perf_counter() - t
        t = time.perf_counter()
        p_single = np.concatenate([clf.predict_boxes(img, res.boxes[i:i + 1], batch_size=1) for i in range(len(res))])
        single_s = time.perf_counter() - t
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
        out["smears"].append({
            "seed": seed, "n_cells": int(sm.n_cells), "n_regions_truth": int(len(gt)), "n_regions_found": int(len(res)),
            "recall_iou50": float(found.mean()), "precision_iou50": float(tp.mean()) if len(tp) else None,
            "end_to_end_seconds_median": round(statistics.median(times), 3),
            "end_to_end_seconds_all": [round(x, 3) for x in times],
            "stage_seconds": {k: round(v, 3) for k, v in res.timings.items()},
            "classify_batched_seconds": round(batched_s, 3), "classify_one_at_a_time_seconds": round(single_s, 3),
            "batched_speedup": round(single_s / max(batched_s, 1e-9), 1),
            "batched_equals_single": bool(np.allclose(p_batched, p_single, atol=1e-4)),
        })
    yt, yp, yl = np.concatenate(all_true), np.concatenate(all_prob), np.concatenate(all_pred)
    prev = yt.mean(axis=0)
    aucs = [roc_auc_score(yt[:, j], yp[:, j]) for j in range(6) if 0 < yt[:, j].sum() < len(yt)]
    out["detection"] = {"recall_iou50": n_found_tot / max(n_gt_tot, 1), "precision_iou50": n_tp_tot / max(n_det_tot, 1),
                        "n_truth": n_gt_tot, "n_found": n_det_tot}
    out["types"] = {
        "n_matched_regions": int(len(yt)),
        "exact_match": float(np.mean(np.all(yl == yt, axis=1))),
        "chance_exact_match": float(np.prod(prev ** 2 + (1 - prev) ** 2)),
        "per_type_accuracy": {t: float(np.mean(yl[:, j] == yt[:, j])) for j, t in enumerate(RBC_TYPES)},
        "per_type_majority_baseline": {t: float(max(prev[j], 1 - prev[j])) for j, t in enumerate(RBC_TYPES)},
        "mean_auc": float(np.mean(aucs)) if aucs else None,
    }
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
