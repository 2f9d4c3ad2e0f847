"""Batch RBC analysis: ``python -m napari_sickle.analyze INPUTS... --out DIR``.

For each input image writes ``<stem>_regions.csv`` (regions CSV schema) and
``<stem>_overlay.png`` (boxes: red = abnormal, green = normal), plus one ``summary.csv``
for the run. INPUTS may be image files, folders (their images) or ``simulated`` / ``simulated:SEED``
(a simulated smear). Without ``--detector``/``--classifier`` the cached default models are
used (trained on simulated smears on first use).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def _inputs(items):
    for it in items:
        if it == "simulated" or it.startswith("simulated:"):
            seed = int(it.split(":", 1)[1]) if ":" in it else 0
            yield f"simulated_seed{seed}", ("simulated", seed)
            continue
        p = Path(it)
        if p.is_dir():
            for f in sorted(p.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                    yield f.stem, f
        else:
            yield p.stem, p


def _load(src):
    import numpy as np

    if isinstance(src, tuple):
        from .data.simulate import simulate_smear

        return simulate_smear(seed=src[1]).image
    from .io.images import read_image

    return np.asarray(read_image(src))


def overlay_png(rgb, result, path):
    """Draw boxes (red abnormal, green normal) on the image and save it as PNG."""
    import imageio.v3 as iio
    import numpy as np
    from skimage.draw import rectangle_perimeter

    img = rgb.copy()
    h, w = img.shape[:2]
    for (x0, y0, x1, y1), abn in zip(result.boxes, result.abnormal):
        color = (255, 40, 40) if abn else (40, 230, 60)
        for d in range(2):
            rr, cc = rectangle_perimeter((int(y0) + d, int(x0) + d), end=(int(y1) - 1 - d, int(x1) - 1 - d),
                                         shape=(h, w), clip=True)
            img[rr, cc] = color
    iio.imwrite(path, np.ascontiguousarray(img))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m napari_sickle.analyze", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="image files, folders, or 'simulated[:SEED]'")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    ap.add_argument("--detector", default=None, help="detector checkpoint (default: cached default model)")
    ap.add_argument("--classifier", default=None, help="classifier checkpoint (default: cached default model)")
    ap.add_argument("--score-threshold", type=float, default=0.5)
    ap.add_argument("--nms-iou", type=float, default=0.5)
    ap.add_argument("--type-threshold", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--no-train", action="store_true", help="fail instead of training default models")
    ap.add_argument("--overwrite", action="store_true", help="replace existing output files")
    args = ap.parse_args(argv)

    import pandas as pd
    from tqdm import tqdm

    from .analysis.smear import analyze_smear
    from .io.formats import write_regions_csv
    from .io.images import to_rgb_uint8
    from .models.registry import load_models

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = list(_inputs(args.inputs))
    if not inputs:
        print("no input images found", file=sys.stderr)
        return 2
    bar_state = {}

    def train_progress(stage, done, total):
        bar = bar_state.get(stage)
        if bar is None:
            bar = bar_state[stage] = tqdm(total=total, desc=stage, leave=False)
        bar.n = done
        bar.refresh()

    models = load_models(args.detector, args.classifier, device=args.device, progress=train_progress,
                         allow_train=not args.no_train)
    for b in bar_state.values():
        b.close()
    rows = []
    for name, src in tqdm(inputs, desc="analyze", unit="image"):
        try:
            img = _load(src)
        except (ValueError, OSError) as exc:
            tqdm.write(f"skipped {src}: {exc}")
            rows.append({"image": str(src), "error": str(exc)})
            continue
        res = analyze_smear(img, models, score_threshold=args.score_threshold, nms_iou=args.nms_iou,
                            type_threshold=args.type_threshold, batch_size=args.batch_size, device=args.device,
                            image_name=name)
        csv_path, png_path = out / f"{name}_regions.csv", out / f"{name}_overlay.png"
        if args.overwrite:
            csv_path.unlink(missing_ok=True)
        write_regions_csv(res.to_dataframe(name if isinstance(src, tuple) else Path(src).name), csv_path)
        overlay_png(to_rgb_uint8(img), res, png_path)
        s = res.summary
        row = {"image": name if isinstance(src, tuple) else str(src), "n_regions": s["n_regions"],
               **{f"n_{t}": c for t, c in s["counts"].items()}, "n_abnormal": s["n_abnormal"],
               "abnormal_fraction": s["abnormal_fraction"], "scd_call": s["scd_call"],
               "seconds": round(res.timings.get("total", 0.0), 3), "regions_csv": str(csv_path),
               "overlay_png": str(png_path)}
        rows.append(row)
    summary = out / "summary.csv"
    if summary.exists() and not args.overwrite:
        from datetime import datetime

        summary = out / f"summary_{datetime.now():%Y%m%d_%H%M%S}.csv"
    pd.DataFrame(rows).to_csv(summary, index=False)
    print(json.dumps({"summary": str(summary), "images": len(rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
