"""Score an RBC region detector on the validation splits of the real smear sources.

    python benchmarks/bench_real_detector.py --detector best.pt [--data $SICKLE_DATA] [--threads 2]
                                             [--limit N] [--json out.json]

Validation splits (``data.real_smears``): BCCD ``val.txt``; BBBC041Seg every 4th image by
sorted name; Chula RBC-12 images whose number is divisible by 5. None of them is used for
training by ``train detector --data real:...``. Per source it prints: Chula, the share of
labelled cells (points) inside a detected box; BBBC041, region AP50 (one box per connected
region of mask pixels) and recall at IoU 0.5; BCCD, RBC AP50 (``training.detector.ap50``'s
Pascal VOC all-point AP). AP uses every detection (score >= 0.05); recall, precision and the
points use the boxes ``analyze_smear`` keeps (score >= 0.5). Also: the estimated cell diameter
against the annotated median box size, the detection seconds per image, and checks on the
labels (``score_real``: images without a box, AP50 on the others, kept boxes touching no
box). ``--analyze`` also scores the regions the Analyze button shows
(``analysis.smear.detect_regions`` with its defaults: score >= 0.5, boxes without cell pixels
dropped, the model's own merge setting), as ``sources_analyze``: the figures a user of the
plugin gets.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", required=True, help="detector checkpoint or model name")
    ap.add_argument("--data", default=os.environ.get("SICKLE_DATA", "../shared/data"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="at most N validation images per source")
    ap.add_argument("--score", type=float, default=0.5, help="score threshold for recall / points inside")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--analyze", action="store_true", help="also score the regions analyze_smear keeps")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from napari_sickle.data.real_smears import load_real_smears
    from napari_sickle.models.detector import RegionDetector
    from napari_sickle.training.detector import predict_items, score_real

    path = args.detector
    try:
        from napari_sickle.models import zoo

        if zoo.is_model_name(path):
            path = str(zoo.resolve(path, "rbc", "detector"))
    except ImportError:  # pragma: no cover - older installs without the zoo
        pass
    det = RegionDetector.from_checkpoint(path, device="cpu")
    t0 = time.perf_counter()
    items = load_real_smears(args.data, "val", limit=args.limit)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = predict_items(det, items, score_threshold=0.05)
    det_s = time.perf_counter() - t0
    res = score_real(preds, items, score_threshold=args.score)
    for src, r in res.items():
        its = [it for it in items if it["source"] == src]
        est = np.array([it["diameter"] or np.nan for it in its], float)
        ann = np.array(
            [
                np.median(np.sqrt((it["boxes"][:, 2] - it["boxes"][:, 0]) * (it["boxes"][:, 3] - it["boxes"][:, 1])))
                if len(it["boxes"])
                else np.nan
                for it in its
            ]
        )
        r["diameter_estimate_median"] = float(np.nanmedian(est))
        r["estimate_over_box_size"] = [float(np.nanpercentile(est / ann, q)) for q in (5, 50, 95)]
    out = {
        "detector": str(args.detector),
        "cell_diameter": det.config.get("cell_diameter"),
        "tta": det.config.get("tta"),
        "threads": args.threads,
        "score_threshold": args.score,
        "seconds_load": round(load_s, 1),
        "seconds_detect": round(det_s, 1),
        "seconds_per_image": round(det_s / max(len(items), 1), 3),
        "load_average": os.getloadavg(),
        "sources": res,
    }
    if args.analyze:
        from napari_sickle.analysis.smear import detect_regions

        kept = []
        for it in items:
            b, sc, _fg = detect_regions(it["image"], det, score_threshold=args.score)
            kept.append((b, sc, np.ones(len(b), np.int64)))
        out["sources_analyze"] = score_real(kept, items, score_threshold=args.score)
    print(
        f"{'source':<13} {'images':>6} {'boxes':>6} {'AP50':>6} {'recall':>6} {'points in':>9} "
        f"{'est/box d (5/50/95%)':>22}"
    )
    rows = [(src, r, "/".join(f"{v:.2f}" for v in r["estimate_over_box_size"])) for src, r in res.items()]
    rows += [(f"{src} (Analyze)", r, "") for src, r in out.get("sources_analyze", {}).items()]
    for src, r, q in rows:
        pin = f"{r['points_inside']:.4f}" if "points_inside" in r else "-"
        apv = f"{r['ap50']:.4f}" if r["ap50"] is not None else "-"
        print(f"{src:<13} {r['n_images']:>6} {r['n_boxes']:>6} {apv:>6} {r['recall']:>6.3f} {pin:>9} {q:>22}")
    for src, r, _q in rows:  # the labels themselves: BCCD leaves many red cells unboxed
        ap_b = "-" if r["ap50_images_with_boxes"] is None else f"{r['ap50_images_with_boxes']:.4f}"
        print(
            f"{src}: {r['n_images_without_boxes']} images without a box; AP50 on the others {ap_b}; "
            f"kept boxes touching no annotated box {r['kept_touching_no_box']:.3f}"
        )
    print(f"detect: {out['seconds_per_image']} s/image ({args.threads} threads, load {os.getloadavg()[0]:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
