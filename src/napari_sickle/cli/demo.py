"""The main job on the built-in default: ``python -m napari_sickle.demo --out out/demo``.

1. Simulate a 1920x1080 smear (seed 0) and write it as an image/mask pair folder with its
   ground-truth regions CSV.
2. Analyse it, and a real smear, end to end with the shipped default models
   (``python -m napari_sickle.analyze``; no training step): regions CSV, overlay PNG, summary CSV.
   The real smear is ``--real PATH``, by default the first Chula RBC-12 fixture smear under
   ``SICKLE_DATA`` (skipped with a note when that folder is absent).
3. Open the image, the mask and both region tables in a napari viewer through the plugin's
   reader, write the layers back through the plugin's writers, and save a screenshot of each smear.

Needs a display for the screenshot (``scripts/demo.sh`` runs it under ``xvfb-run``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..constants import DEVICES


def _matched_at_50(gt, pred):
    """Per row of ``gt``: whether some ``pred`` box overlaps its box at IoU >= 0.5."""
    import numpy as np
    import torch
    from torchvision.ops import box_iou

    cols = ["x_min", "y_min", "x_max", "y_max"]
    if len(gt) == 0 or len(pred) == 0:
        return np.zeros(len(gt), bool)
    iou = box_iou(torch.tensor(gt[cols].to_numpy(float)), torch.tensor(pred[cols].to_numpy(float)))
    return (iou.max(dim=1).values >= 0.5).numpy()


def _recall_at_50(gt, pred) -> float:
    return 1.0 if len(gt) == 0 else float(_matched_at_50(gt, pred).mean())


def _cells_found_at_50(smear, pred) -> float:
    """Share of the simulated cells found at IoU >= 0.5, by their own box or by the box of their
    touching group: a detector may box touching cells one by one (real-smear models) or as one
    region (the simulator's region truth); either finds the cell."""
    if smear.n_cells == 0:
        return 1.0
    own = _matched_at_50(smear.cells, pred)
    region_found = dict(zip(smear.regions["region_id"], _matched_at_50(smear.regions, pred)))
    group = smear.cells["region_id"].map(region_found).fillna(False).to_numpy(bool)
    return float((own | group).mean())


def _fixture_smear():
    """A real smear from the SICKLE_DATA fixtures (Chula RBC-12, then BCCD), or None."""
    from .._paths import sickle_data_dir

    d = sickle_data_dir()
    if d is None:
        return None
    for sub in ("fixtures/chula-rbc12/Dataset", "fixtures/bccd/JPEGImages"):
        files = sorted((d / sub).glob("*.jpg")) if (d / sub).is_dir() else []
        if files:
            return files[0]
    return None


def _only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise RuntimeError(f"expected one {pattern} in {folder}, found {[p.name for p in found]}")
    return found[0]


def _show_real(viewer, image: Path, regions_csv: Path, shot: Path) -> int:
    """Show a real smear with its analysed regions (opened through the plugin) and screenshot it."""
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    viewer.open(str(image), plugin="napari-sickle")
    viewer.open(str(regions_csv), plugin="napari-sickle")
    viewer.reset_view()
    viewer.screenshot(str(shot), canvas_only=False, flash=False)
    return len(viewer.layers[-1].data)


def _simulate(pair: Path, seed: int):
    """Simulate a smear and write it as an image/mask pair folder with its ground-truth regions
    CSV; returns ``(smear, image path, mask path, regions CSV path)``."""
    import imageio.v3 as iio
    import numpy as np

    from ..data.simulate import simulate_smear
    from ..io.formats import write_regions_csv

    smear = simulate_smear(seed=seed, style="auto")
    (pair / "images").mkdir(parents=True)
    (pair / "masks").mkdir(parents=True)
    img_path = pair / "images" / "smear.png"
    mask_path = pair / "masks" / "smear.png"
    iio.imwrite(img_path, smear.image)
    iio.imwrite(mask_path, ((smear.instances > 0) * 255).astype(np.uint8))
    gt_csv = pair / "smear_truth.csv"
    write_regions_csv(smear.regions.assign(image=img_path.name), gt_csv)
    print(f"[demo] simulated {smear.n_cells} cells in {len(smear.regions)} regions -> {pair}")
    return smear, img_path, mask_path, gt_csv


def _napari_round_trip(out: Path, paths: list[Path], real: Path | None) -> None:
    """Open ``paths`` (image, mask, true and predicted regions) in a viewer through the plugin's
    reader, save the layers back through its writers, and screenshot this smear and ``real``."""
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    try:
        for path in paths:
            viewer.open(str(path), plugin="napari-sickle")
        viewer.layers[-2].visible = False  # the ground-truth boxes: show the predictions
        for layer in viewer.layers:
            if type(layer).__name__ == "Labels":
                layer.contour = 2  # the mask as outlines, so the cells stay visible
        viewer.layers[-1].text.size = 7
        saved = out / "layers"
        saved.mkdir()
        written = []
        for layer in list(viewer.layers):
            ext = {"Labels": ".tif", "Shapes": ".csv"}.get(type(layer).__name__)
            if ext is None:
                continue
            dest = saved / (layer.name.replace(" ", "_") + ext)
            viewer.layers.selection = {layer}
            written += viewer.layers.save(str(dest), selected=True, plugin="napari-sickle")
        viewer.reset_view()
        shot = viewer.screenshot(str(out / "screenshot.png"), canvas_only=False, flash=False)
        print(f"[demo] wrote {len(written)} layers through the plugin's writers -> {saved}")
        print(f"[demo] screenshot {out / 'screenshot.png'} ({shot.shape[1]}x{shot.shape[0]})")
        if real is not None:
            n_real = _show_real(
                viewer, real, _only(out / "analysis", f"{real.stem}*_regions.csv"), out / "screenshot_real.png"
            )
            print(f"[demo] real smear {real.name}: {n_real} regions; screenshot {out / 'screenshot_real.png'}")
    finally:
        viewer.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m napari_sickle.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="out/demo", help="output folder (created; must be empty or new)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", choices=DEVICES)
    ap.add_argument("--real", default=None, help="a real smear image to analyse too (default: a SICKLE_DATA fixture)")
    args = ap.parse_args(argv)

    from ..io.formats import read_regions_csv
    from . import analyze

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"error: output folder {out} is not empty; choose another --out", file=sys.stderr)
        return 2
    t0 = time.perf_counter()

    # 1. simulate
    smear, img_path, mask_path, gt_csv = _simulate(out / "smear", args.seed)

    # 2. analyse (the batch command's own code path)
    real = Path(args.real) if args.real else _fixture_smear()
    inputs = [str(img_path)] + ([str(real)] if real is not None else [])
    rc = analyze.main([*inputs, "--out", str(out / "analysis"), "--device", args.device])
    if rc != 0:
        return rc
    if real is None:
        print("[demo] no real smear given and SICKLE_DATA not found: analysed the simulated smear only")
    pred_csv = _only(out / "analysis", "smear*_regions.csv")
    pred = read_regions_csv(pred_csv)
    recall = _recall_at_50(smear.regions, pred)
    cells_found = _cells_found_at_50(smear, pred)
    print(
        f"[demo] {len(pred)} regions detected; recall of true regions at IoU 0.5: {recall:.3f}; "
        f"cells found by their own or their touching group's box: {cells_found:.3f}"
    )

    # 3. napari: plugin readers in, plugin writers out, screenshot
    _napari_round_trip(out, [img_path, mask_path, gt_csv, pred_csv], real)
    print(
        json.dumps(
            {
                "cells": int(smear.n_cells),
                "true_regions": int(len(smear.regions)),
                "detected_regions": int(len(pred)),
                "recall_iou50": round(recall, 3),
                "cells_found_iou50": round(cells_found, 3),
                "seconds": round(time.perf_counter() - t0, 1),
                "out": str(out),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
