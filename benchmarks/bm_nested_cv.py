"""Nested cross-validation of the default ``train bm`` command on the WBC crops.

The crops are split into K stratified outer folds. For each fold the *default command*

    python -m napari_sickle.train bm --data <fold>/train.csv --out <fold> --threads 1 --json-progress

trains on the other K-1 folds (it splits those again for its own checkpoint selection), and
``evaluate_bm`` (the code of ``python -m napari_sickle.evaluate bm``) scores ``best.pt`` on the
held-out fold, which training never saw. Every crop is tested exactly once, so the pooled
macro-F1 over all crops is the estimate of the recipe on new crops of this dataset; the
per-fold figures show its spread on 48-crop test sets.

    .venv/bin/python benchmarks/bm_nested_cv.py --out runs/bm_cv [--folds 5] [--jobs 2] [-o key=value ...]

Prints one JSON line per fold (macro-F1, accuracy, wall time of the training command, best
epoch) and a final ``pooled`` line; writes ``summary.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def run_fold(i, fold_dir: Path, options, threads: int, seed: int):
    cmd = [
        sys.executable,
        "-m",
        "napari_sickle.train",
        "bm",
        "--data",
        str(fold_dir / "train.csv"),
        "--out",
        str(fold_dir),
        "--threads",
        str(threads),
        "--seed",
        str(seed),
        "--json-progress",
    ]
    for o in options:
        cmd += ["-o", o]
    t0 = time.perf_counter()
    with open(fold_dir / "train.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return i, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="labels.csv or its folder (default: $SICKLE_DATA/wbc-zheng2018)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2, help="folds trained at once (one torch thread each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--split-seed", type=int, default=2026, help="seed of the outer folds")
    ap.add_argument("-o", "--option", action="append", default=[], help="train option key=value")
    args = ap.parse_args()

    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    from napari_sickle.training.bm import _metrics, _table_from_csv, evaluate_bm

    data = Path(args.data or Path(os.environ["SICKLE_DATA"]) / "wbc-zheng2018")
    table = _table_from_csv(data if data.suffix == ".csv" else data / "labels.csv")
    table = pd.DataFrame({"path": [str(Path(p).resolve()) for p in table["path"]], "class_name": table["label"]})
    out = Path(args.out)
    skf = StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=args.split_seed)
    dirs = []
    for i, (tr, te) in enumerate(skf.split(table, table["class_name"])):
        d = out / f"outer{i + 1}"
        d.mkdir(parents=True, exist_ok=True)
        table.iloc[tr].to_csv(d / "train.csv", index=False)
        table.iloc[te].to_csv(d / "test.csv", index=False)
        dirs.append(d)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        walls = dict(pool.map(lambda a: run_fold(*a, args.option, args.threads, args.seed), enumerate(dirs)))
    total = time.perf_counter() - t0
    preds, folds = [], []
    for i, d in enumerate(dirs):
        m = evaluate_bm(d / "best.pt", d / "test.csv", device="cpu", predictions=True)
        done = [json.loads(line) for line in open(d / "train.log") if line.startswith("{")]
        epochs = [r for r in done if r.get("event") == "epoch"]
        best = max(epochs, key=lambda r: r.get("metric", -1)) if epochs else {}
        row = {
            "fold": i + 1,
            "n": m["n"],
            "macro_f1": round(m["macro_f1"], 4),
            "accuracy": round(m["accuracy"], 4),
            "per_class_f1": {c: round(v["f1"], 3) for c, v in m["per_class"].items()},
            "best_epoch": best.get("epoch"),
            "train_wall_s": round(walls[i], 1),
        }
        print(json.dumps(row), flush=True)
        folds.append(row)
        preds += m["predictions"]
    names = sorted({p["label"] for p in preds})
    y = [names.index(p["label"]) for p in preds]
    yhat = [names.index(p["predicted"]) if p["predicted"] in names else -1 for p in preds]
    pooled = _metrics(y, yhat, names)
    f1s = [f["macro_f1"] for f in folds]
    summary = {
        "pooled": {
            "macro_f1": round(pooled["macro_f1"], 4),
            "macro_precision": round(pooled["macro_precision"], 4),
            "macro_recall": round(pooled["macro_recall"], 4),
            "accuracy": round(pooled["accuracy"], 4),
            "n": pooled["n"],
            "per_class_f1": {c: round(v["f1"], 3) for c, v in pooled["per_class"].items()},
        },
        "fold_macro_f1": f1s,
        "fold_mean": round(sum(f1s) / len(f1s), 4),
        "fold_min": min(f1s),
        "options": args.option,
        "wall_s_all_folds": round(total, 1),
        "errors": [p for p in preds if p["label"] != p["predicted"]],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "errors"}), flush=True)


if __name__ == "__main__":
    main()
