"""Batch norm folding and channels_last on the shipped models: outputs and speed.

    python benchmarks/bench_fuse.py [--threads 2] [--repeats 5] [--seed 2026] [--fixtures 2] [--bm-cells 8]
                                    [--no-speed] [--bf16] [--archs det:mobilenet-v3 clf:resnet18@64 ...]

Loads the shipped default RBC detector and classifier once without folding, then compares four
variants of each network on one simulated 1920x1080 smear: as loaded (NCHW), batch norm folded
(``models.fuse.fold_batchnorm``), and each of them with channels_last weights (the classifier's
inputs stay NCHW, as ``RBCClassifier.features`` sends them on the CPU). Prints one JSON object
with:

* outputs: largest difference of the detector's boxes and scores (same boxes matched one to
  one) and of the classifier's probabilities between the folded (NCHW, and channels_last as
  ``load_models`` gives them on the CPU) and the unfolded networks, on
  the smear and on ``--fixtures`` real smears from ``$SICKLE_DATA/fixtures/chula-rbc12``, and of
  the shipped white-cell model's softmax on the ``pbc-wbc`` fixture cells;
* speed: seconds of the detector's forward pass (``detect_tensors``) and of the classifier's
  features of the smear's regions, median of ``--repeats`` runs taken in turn (variant A, B, C,
  D, A, B, ...) so a change of load touches every variant alike; ``--archs`` times the same
  variants for other detector architectures and classifier backbones (random weights: speed
  only); ``--bf16`` times the folded channels_last pair with CPU bfloat16 autocast against
  float32 and reports how far its boxes and probabilities move. The load average is recorded.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np


def _variants(module, torch):
    from napari_sickle.models.fuse import fold_batchnorm

    folded = fold_batchnorm(copy.deepcopy(module))
    return {
        "nchw": module.eval(),
        "folded": folded,
        "channels_last": copy.deepcopy(module).to(memory_format=torch.channels_last),
        "folded_channels_last": copy.deepcopy(folded).to(memory_format=torch.channels_last),
    }


def _match_diff(a, b) -> dict:
    """Largest box-coordinate and score difference of two detections (boxes, scores, labels),
    each box of ``a`` matched to the nearest box of ``b``."""
    ba, sa, _ = (np.asarray(x) for x in a)
    bb, sb, _ = (np.asarray(x) for x in b)
    out = {"n_reference": int(len(ba)), "n_compared": int(len(bb))}
    if len(ba) and len(bb):
        d = np.abs(ba[:, None, :] - bb[None, :, :]).max(-1)
        j = d.argmin(1)
        out["max_box_px"] = float(d[np.arange(len(ba)), j].max())
        out["max_score"] = float(np.abs(sa - sb[j]).max())
    return out


def _fixture_images(n: int) -> list:
    from napari_sickle.io.images import read_image

    root = Path(os.environ.get("SICKLE_DATA", "")) / "fixtures" / "chula-rbc12" / "Dataset"
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".png"))[:n]
    return [(p.name, np.asarray(read_image(p))[..., :3]) for p in files]


def compare_rbc(det, clf, images, torch) -> list:
    """Outputs of the detector and classifier on ``images``: folded (NCHW) and folded with
    channels_last weights (what ``load_models`` gives on the CPU) against the unfolded NCHW ones."""
    from napari_sickle.models.fuse import prepare_inference

    variants = {
        name: (
            dataclasses.replace(det, model=prepare_inference(copy.deepcopy(det.model), "cpu", channels_last=cl)),
            dataclasses.replace(clf, net=prepare_inference(copy.deepcopy(clf.net), "cpu", channels_last=cl)),
        )
        for name, cl in (("folded", False), ("folded_channels_last", True))
    }
    out = []
    for name, img in images:
        ref = det.detect(img)
        boxes = ref[0]
        p_ref = clf.predict_boxes(img, boxes) if len(boxes) else None
        row = {"image": name, "regions": int(len(boxes))}
        for variant, (det_v, clf_v) in variants.items():
            row[variant] = {"detector": _match_diff(ref, det_v.detect(img))}
            if p_ref is not None:
                row[variant]["classifier_max_abs_prob"] = float(np.abs(p_ref - clf_v.predict_boxes(img, boxes)).max())
        out.append(row)
    return out


def compare_bm(n: int, torch) -> dict:
    """Folded vs unfolded softmax of the shipped white-cell model on ``n`` fixture cells."""
    from napari_sickle.analysis.bm import preprocess
    from napari_sickle.io.images import read_image
    from napari_sickle.models.bm import load_bm_model
    from napari_sickle.models.fuse import fold_batchnorm

    root = Path(os.environ.get("SICKLE_DATA", "")) / "fixtures" / "pbc-wbc" / "images"
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".png"))[:n]
    model = load_bm_model(None)
    net = model.module.eval()
    folded = fold_batchnorm(copy.deepcopy(net))
    x = preprocess([np.asarray(read_image(p))[..., :3] for p in files], model)
    with torch.inference_mode():
        a, b = torch.softmax(net(x), 1), torch.softmax(folded(x), 1)
    return {
        "cells": len(files),
        "max_abs_prob": float((a - b).abs().max()),
        "same_top1": bool((a.argmax(1) == b.argmax(1)).all()),
    }


def time_variants(det, clf, img, repeats: int, torch) -> dict:
    """Median seconds of the detector's forward pass and the classifier's features per variant."""
    t_img = torch.as_tensor(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
    scale = det.image_scale(img)
    boxes = det.detect(img)[0]
    crops, _ = clf.region_crops(img, boxes)
    dets = {k: dataclasses.replace(det, model=m) for k, m in _variants(det.model, torch).items()}
    clfs = {k: dataclasses.replace(clf, net=m) for k, m in _variants(clf.net, torch).items()}
    times = {k: {"detector": [], "classifier": []} for k in dets}
    for r in range(repeats + 1):  # the first round is a warm-up
        for k in dets:
            t = time.perf_counter()
            dets[k].detect_tensors([t_img], scales=[scale])
            td = time.perf_counter() - t
            t = time.perf_counter()
            clfs[k].features(crops)  # NCHW inputs, as the CPU path sends them
            tc = time.perf_counter() - t
            if r:
                times[k]["detector"].append(td)
                times[k]["classifier"].append(tc)
    return {
        "regions": int(len(boxes)),
        "classifier_inputs": int(len(crops)),
        "median_seconds": {
            k: {part: round(statistics.median(v), 4) for part, v in d.items()} for k, d in times.items()
        },
        "all_seconds": {k: {part: [round(x, 4) for x in v] for part, v in d.items()} for k, d in times.items()},
    }


def bf16_check(det, clf, img, repeats: int, torch) -> dict:
    """The folded channels_last pair with and without CPU bfloat16 autocast: median seconds of
    the detector's forward pass and the classifier's features (in turn), the detector's boxes
    matched to the float32 ones, and the largest probability difference on the same boxes."""
    import contextlib

    from napari_sickle.models.fuse import prepare_inference

    det_f = dataclasses.replace(det, model=prepare_inference(copy.deepcopy(det.model), "cpu", channels_last=True))
    clf_f = dataclasses.replace(clf, net=prepare_inference(copy.deepcopy(clf.net), "cpu", channels_last=True))
    t_img = torch.as_tensor(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
    scale = det.image_scale(img)
    ref_det = det_f.detect(img)
    crops, owner = clf_f.region_crops(img, ref_det[0])
    modes = {"float32": contextlib.nullcontext, "bfloat16": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}
    times = {k: {"detector": [], "classifier": []} for k in modes}
    out = {}
    for r in range(repeats + 1):
        for k, ctx in modes.items():
            with ctx():
                t = time.perf_counter()
                found = det_f.detect_tensors([t_img], scales=[scale])[0]
                td = time.perf_counter() - t
                t = time.perf_counter()
                feats = clf_f.features(crops)
                tc = time.perf_counter() - t
            if r:
                times[k]["detector"].append(td)
                times[k]["classifier"].append(tc)
            out[k] = (found, clf_f.region_probs(feats, owner, len(ref_det[0])))
    return {
        "median_seconds": {k: {p: round(statistics.median(v), 4) for p, v in d.items()} for k, d in times.items()},
        "detector_bf16_vs_fp32": _match_diff(out["float32"][0], out["bfloat16"][0]),
        "classifier_bf16_max_abs_prob": float(np.abs(out["float32"][1] - out["bfloat16"][1]).max()),
    }


def time_other_archs(archs, repeats: int, torch) -> dict:
    """Median seconds of the four variants for other (randomly initialised) networks: detector
    architectures (``det:<arch>``, one forward pass of a 960x540 image) and classifier
    backbones (``clf:<backbone>@<px>``, pooled features of 64 inputs of <px> pixels)."""
    from napari_sickle.models.detector import build_detector
    from napari_sickle.models.multilabel import make_net

    out = {}
    for spec in archs:
        kind, _, name = spec.partition(":")
        torch.manual_seed(0)
        if kind == "det":
            net, x = build_detector(name, pretrained=False), [torch.rand(3, 540, 960)]
            net.transform.min_size, net.transform.max_size = (540,), 960
        else:
            name, _, px = name.partition("@")
            net, x = make_net(name, pretrained=False).backbone, torch.randn(64, 3, int(px or 64), int(px or 64))
        variants = _variants(net, torch)
        times = {k: [] for k in variants}
        with torch.inference_mode():
            for r in range(repeats + 1):
                for k, m in variants.items():
                    t = time.perf_counter()
                    m(x)
                    if r:
                        times[k].append(time.perf_counter() - t)
        out[spec] = {k: round(statistics.median(v), 4) for k, v in times.items()}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--fixtures", type=int, default=2, help="real chula-rbc12 fixture smears to compare on")
    ap.add_argument("--bm-cells", type=int, default=8, help="pbc-wbc fixture cells for the white-cell model")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="also time CPU bfloat16 autocast (folded, channels_last)")
    ap.add_argument(
        "--archs",
        nargs="*",
        default=[],
        help="other networks to time, random weights: det:mobilenet-v3 det:resnet50-fpn-v2 clf:resnet18@64 ...",
    )
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    import torch

    torch.set_num_threads(args.threads)
    from napari_sickle.data.simulate import simulate_smear
    from napari_sickle.models.registry import load_models

    models = load_models(device="cpu", fuse=False, channels_last=False)
    img = simulate_smear(seed=args.seed).image
    images = [(f"simulated seed {args.seed}", img), *_fixture_images(args.fixtures)]
    out = {"threads": args.threads, "load_average_before": [round(x, 2) for x in load_before]}
    out["outputs"] = compare_rbc(models.detector, models.classifier, images, torch)
    if args.bm_cells:
        out["bm"] = compare_bm(args.bm_cells, torch)
    if not args.no_speed:
        out["speed"] = time_variants(models.detector, models.classifier, img, args.repeats, torch)
    if args.bf16:
        out["bf16"] = bf16_check(models.detector, models.classifier, img, args.repeats, torch)
    if args.archs:
        out["other_archs"] = time_other_archs(args.archs, args.repeats, torch)
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
