"""The smear-level calls of the whole Analyze run on every source's validation smears.

    python benchmarks/bench_smear_calls.py [--model NAME] [--data $SICKLE_DATA] [--threads 2]
                                           [--limit N] [--json out.json]

Each validation smear of Chula RBC-12 (image number divisible by 5), BCCD (``val.txt``) and
BBBC041Seg (every 4th image by name; ``data.real_smears``) goes through
``analysis.smear.analyze_smear`` with the shipped default (or ``--model``), as the Analyze
button runs it. None of these smears is from a sickle cell patient: BCCD is normal blood,
BBBC041 malaria, Chula a mix in which some smears are almost all elliptocytes (mapped to
Elongated/Sickle, so "positive" is the mapping's answer there). Per source it prints the
smears' ``type_uncertainty`` (5 / 50 / 95%), the share above ``TYPE_UNCERTAINTY_MAX``, the SCD
calls, and how many smears the rule without its two guards (every Elongated/Sickle label
counted, no uncertainty check) would call positive; the share of smears read with their cell
lightness matched to the classifier's training smears (``analysis.smear.classify_regions``), and
over all regions the share called abnormal, with no type, and Oval/Disc; the median seconds per
smear of those read once and of those read twice (the first smear includes warm-up). Also the
load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def smears(root: Path, limit: int | None):
    """``(source, RGB image)`` of the validation smears of each source found under ``root``."""
    from bench_real_classifier import chula_smears

    from napari_sickle.data.real_smears import load_real_smears

    if (root / "chula-rbc12").is_dir():
        for k, (_n, rgb, _p) in enumerate(chula_smears(root / "chula-rbc12")):
            if limit is not None and k >= limit:
                break
            yield "chula-rbc12", rgb
    for src in ("bccd", "bbbc041seg"):
        if (root / src).is_dir():
            for k, it in enumerate(load_real_smears(root, "val", sources=(src,))):
                if limit is not None and k >= limit:
                    break
                yield src, it["image"]


def unguarded_call(probs: np.ndarray) -> str:
    """The SCD call with every Elongated/Sickle label counted and no uncertainty check."""
    from napari_sickle.analysis.smear import SCD_MIN_FRACTION, SCD_MIN_REGIONS, SCD_MIN_SICKLE

    n, k = len(probs), int((probs[:, 1] >= 0.5).sum())
    if n < SCD_MIN_REGIONS:
        return "inconclusive"
    return "positive" if k >= SCD_MIN_SICKLE and k >= SCD_MIN_FRACTION * n else "negative"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="shipped RBC model (default: the shipped default)")
    ap.add_argument("--detector", default=None)
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--data", default=os.environ.get("SICKLE_DATA", "../shared/data"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="at most N smears per source")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from napari_sickle.analysis.smear import TYPE_UNCERTAINTY_MAX, analyze_smear
    from napari_sickle.models.registry import load_models

    models = load_models(detector=a.detector, classifier=a.classifier, model=a.model)
    rows = []  # (source, type uncertainty, call, unguarded call, lightness matched, probs, abnormal)
    seconds = []  # (source, lightness matched, seconds of analyze_smear)
    t0 = time.time()
    for src, rgb in smears(Path(a.data), a.limit):
        t = time.perf_counter()
        r = analyze_smear(rgb, models)
        seconds.append((src, r.summary["lightness_matched"], time.perf_counter() - t))
        s = r.summary
        rows.append(
            (
                src,
                s["type_uncertainty"],
                s["scd_call"],
                unguarded_call(r.probs),
                s["lightness_matched"],
                r.probs,
                r.abnormal,
            )
        )
    out = {"model": a.model or "default", "type_uncertainty_max": TYPE_UNCERTAINTY_MAX, "sources": {}}
    for src in dict.fromkeys(s for s, *_ in rows):
        u = np.array([x[1] for x in rows if x[0] == src])
        P = np.concatenate([x[5] for x in rows if x[0] == src]).reshape(-1, 6)
        abn = np.concatenate([x[6] for x in rows if x[0] == src]).astype(bool)
        out["sources"][src] = {
            "smears": len(u),
            "type_uncertainty_q05_q50_q95": [round(float(q), 3) for q in np.quantile(u, [0.05, 0.5, 0.95])],
            "share_uncertain": round(float(np.mean(u > TYPE_UNCERTAINTY_MAX)), 3),
            "scd_calls": dict(Counter(x[2] for x in rows if x[0] == src)),
            "unguarded_calls": dict(Counter(x[3] for x in rows if x[0] == src)),
            "share_lightness_matched": round(float(np.mean([x[4] for x in rows if x[0] == src])), 3),
            "regions": int(len(P)),
            "regions_abnormal": round(float(np.mean(abn)), 3) if len(P) else None,
            "regions_no_type": round(float(np.mean(~(P >= 0.5).any(axis=1))), 3) if len(P) else None,
            "regions_oval_disc": round(float(np.mean(P[:, 0] >= 0.5)), 3) if len(P) else None,
            "median_seconds_read_once_matched": [
                round(float(np.median(t)), 2) if t else None
                for t in ([x[2] for x in seconds if x[0] == src and x[1] == m] for m in (False, True))
            ],
        }
    out["seconds"] = round(time.time() - t0, 1)
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
