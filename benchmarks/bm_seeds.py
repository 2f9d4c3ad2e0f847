"""Seed stability and cross-scanner check of the ``train bm`` command on the WBC crops.

For each training seed the plain command

    python -m napari_sickle.train bm --data <wbc-zheng2018> --out <out>/seed<s> --seed <s> --threads T [-o ...]

trains on the same stratified 80 % of the Zheng 2018 Dataset 1 crops (the held-out 20 % depend
on ``split_seed`` only), and ``evaluate_bm`` (the code of ``python -m napari_sickle.evaluate bm``)
scores ``best.pt`` on

* the held-out Dataset 1 crops (same scanner, never trained on), and
* the same held-out crops after a synthetic change of scanner (``shifted_heldout``: smaller
  cell on a larger, pink canvas), and
* the PBC fixture crops (Barcelona, CellaVision DM96: another scanner, stain and magnification)
  whose class is one of the four Zheng classes (SNE and BNE as neutrophil, LY, MO, EO).

    .venv/bin/python benchmarks/bm_seeds.py --out runs/bm_seeds [--seeds 0 1 2] [-o key=value ...]

Prints one JSON line per seed and a ``summary`` line (mean, spread = max - min); writes
``summary.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PBC_TO_ZHENG = {"SNE": "neutrophil", "BNE": "neutrophil", "LY": "lymphocyte", "MO": "monocyte", "EO": "eosinophil"}


def data_root() -> Path:
    return Path(os.environ.get("SICKLE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def pbc_table(pbc_dir: Path, out: Path) -> Path:
    """A labels.csv of the PBC fixture crops of the four Zheng classes (absolute paths)."""
    import pandas as pd

    df = pd.read_csv(pbc_dir / "labels.csv")
    df = df[df["pbc_class"].isin(list(PBC_TO_ZHENG))]
    rows = pd.DataFrame(
        {
            "image": [str((pbc_dir / p).resolve()) for p in df["image"]],
            "class_name": [PBC_TO_ZHENG[c] for c in df["pbc_class"]],
        }
    )
    p = out / "pbc_zheng_classes.csv"
    rows.to_csv(p, index=False)
    return p


def shifted_heldout(
    checkpoint: Path, out: Path, zoom: float = 0.6, side: int = 200, background=(0.96, 0.87, 0.82)
) -> Path:
    """A synthetic change of scanner for the held-out crops (a labels.csv of new images):
    each crop shrunk to ``zoom`` of its size (a lower magnification) and placed on a
    ``side``-px canvas of its own background colour, then the background re-tinted to a
    pink CellaVision-like colour. Only the framing and the white point change, not the
    stain, so it measures invariance to those two alone."""
    import numpy as np
    import pandas as pd
    from skimage.transform import resize

    from napari_sickle.io.images import read_image, to_rgb_uint8
    from napari_sickle.models.bm import load_bm_model
    from napari_sickle.training.bm import load_bm_data

    model = load_bm_model(checkpoint)
    keep = list(model.recipe.get("val_paths") or [])
    _, labels, _, _, paths = load_bm_data(model.recipe["data"], return_paths=True)
    d = out / "shifted"
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in keep:
        f = to_rgb_uint8(read_image(p)).astype(np.float32) / 255
        lum = f.mean(-1)
        bg = np.median(f[lum >= np.percentile(lum, 75)], axis=0)
        s = round(f.shape[0] * zoom)
        small = resize(f, (s, round(f.shape[1] * zoom)), anti_aliasing=True)
        canvas = np.empty((side, side, 3), np.float32)
        canvas[:] = bg
        y0, x0 = (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
        canvas[y0 : y0 + small.shape[0], x0 : x0 + small.shape[1]] = small
        canvas = np.clip(canvas / bg * np.asarray(background, np.float32), 0, 1)
        name = d / (Path(p).stem + ".png")
        from skimage.io import imsave

        imsave(name, (canvas * 255 + 0.5).astype(np.uint8), check_contrast=False)
        rows.append({"image": name.name, "class_name": labels[paths.index(p)]})
    pd.DataFrame(rows).to_csv(d / "labels.csv", index=False)
    return d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = data_root()
    ap.add_argument("--data", default=str(root / "wbc-zheng2018"))
    ap.add_argument("--pbc", default=str(root / "fixtures" / "pbc-wbc"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("-o", "--option", dest="options", action="append", default=[])
    ap.add_argument("--reuse", action="store_true", help="score an existing <out>/seed<s>/best.pt instead of training")
    a = ap.parse_args(argv)
    import numpy as np

    from napari_sickle.training.bm import evaluate_bm

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pbc_csv = pbc_table(Path(a.pbc), out)
    rows = []
    for seed in a.seeds:
        d = out / f"seed{seed}"
        cmd = [
            sys.executable,
            "-m",
            "napari_sickle.train",
            "bm",
            "--data",
            a.data,
            "--out",
            str(d),
            "--seed",
            str(seed),
            "--threads",
            str(a.threads),
            "--json-progress",
        ]
        if a.epochs:
            cmd += ["--epochs", str(a.epochs)]
        for o in a.options:
            cmd += ["-o", o]
        t0 = time.perf_counter()
        d.mkdir(parents=True, exist_ok=True)
        if not (a.reuse and (d / "best.pt").is_file()):
            with open(d / "train.log", "w") as log:
                subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
        held = evaluate_bm(d / "best.pt", a.data, device="cpu", split="heldout")
        pbc = evaluate_bm(d / "best.pt", str(pbc_csv), device="cpu", predictions=True)
        shifted = evaluate_bm(d / "best.pt", str(shifted_heldout(d / "best.pt", d)), device="cpu")
        row = {
            "seed": seed,
            "heldout_macro_f1": held["macro_f1"],
            "heldout_accuracy": held["accuracy"],
            "heldout_n": held["n"],
            "heldout_f1_per_class": {k: v["f1"] for k, v in held["per_class"].items()},
            "shifted_macro_f1": shifted["macro_f1"],
            "pbc_correct": sum(p["label"] == p["predicted"] for p in pbc["predictions"]),
            "pbc_n": pbc["n"],
            "pbc_predictions": {Path(p["path"]).name: p["predicted"] for p in pbc["predictions"]},
            "train_wall_s": round(wall, 1),
            "load_after": os.getloadavg()[0],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    f1 = np.array([r["heldout_macro_f1"] for r in rows])
    summary = {
        "summary": True,
        "options": a.options,
        "seeds": a.seeds,
        "heldout_macro_f1": f1.round(4).tolist(),
        "mean": float(f1.mean()),
        "spread": float(f1.max() - f1.min()),
        "min": float(f1.min()),
        "shifted_macro_f1": [round(r["shifted_macro_f1"], 4) for r in rows],
        "pbc_correct": [r["pbc_correct"] for r in rows],
        "pbc_n": rows[0]["pbc_n"] if rows else 0,
    }
    print(json.dumps(summary), flush=True)
    (out / "summary.json").write_text(json.dumps({"runs": rows, **summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
