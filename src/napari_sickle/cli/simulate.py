"""Write simulated datasets in the folder layouts the readers and trainers understand.

    python -m napari_sickle.simulate --out DIR --n-images N --seed S --layout LAYOUT

Layouts (see docs/simulator.md):

``pairs``    ``images/<name>.png`` + ``masks/<name>.png`` (binary 0/255 cell mask) +
             ``instances/<name>.tif`` (int32 instance ids, top cell wins) +
             ``regions/<name>.csv`` (regions CSV: connected-region boxes and type sets) +
             ``cells.csv`` (every cell's id, type and box, per image).
``voc``      ``JPEGImages/<name>.jpg`` + ``Annotations/<name>.xml`` (one ``RBC`` object per
             connected region) + ``train.txt``/``val.txt`` (80/20) + ``regions.csv``.
``crops``    class-per-folder single-cell crops using the Xu et al. 2017 folder names
             (``Discocytes/ Oval/ Elongated/ Sickle-ISC/ Reticulocytes/ Granular/
             Echinocytes/ Stomatocyte/``); N is the number of crops per folder.
``patches``  ``patches/<name>.png`` crops of connected regions (one or more touching cells)
             + ``patches.csv`` (``path`` relative to the CSV + six 0/1 type columns,
             ``n_cells``, ``image``, ``region_id``); N is the number of patches.

With ``--crops DIR`` (a class-per-folder set of real single-cell crops) the ``pairs``,
``voc`` and ``patches`` layouts are composed from those crops (napari_sickle.data.compose)
instead of drawn procedurally. Nothing is ever overwritten: the command refuses to write
into a non-empty folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..constants import RBC_TYPES

LAYOUTS = ("pairs", "voc", "crops", "patches")

#: Xu et al. folder written for each type (sub-variants chosen by the cell's shape).
_CROP_FOLDERS = {
    "oval_disc": ("Discocytes", "Oval"),
    "elongated_sickle": ("Elongated", "Sickle-ISC"),
    "reticulocyte": ("Reticulocytes",),
    "granular": ("Granular",),
    "echinocyte": ("Echinocytes",),
    "stomatocyte": ("Stomatocyte",),
}


def _imwrite(path: Path, arr: np.ndarray, **kw) -> None:
    import imageio.v3 as iio

    if path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, arr, **kw)


def _smear(i: int, seed: int, shape, rgb: bool, crops, n_cells, edge_cells, style="pink"):
    """The i-th smear of a dataset: procedural, or composed from real crops."""
    s = int(seed) * 100_003 + i
    kw = {} if edge_cells is None else {"edge_cells": bool(edge_cells)}
    if crops is not None:
        from ..data.compose import compose_smear

        sm = compose_smear(crops, seed=s, shape=shape, n_cells=n_cells, **kw)
        if not rgb:
            sm.image = sm.image.mean(axis=2).round().astype(np.uint8)
        return sm
    from ..data.simulate import simulate_smear

    return simulate_smear(seed=s, shape=shape, n_cells=n_cells, rgb=rgb, style=style, **kw)


def _voc_xml(name: str, shape, depth: int, regions: pd.DataFrame, cls: str = "RBC") -> str:
    import xml.etree.ElementTree as ET

    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = name
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(shape[1])
    ET.SubElement(size, "height").text = str(shape[0])
    ET.SubElement(size, "depth").text = str(depth)
    ET.SubElement(root, "segmented").text = "0"
    for row in regions.itertuples(index=False):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = cls
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        # written as the regions CSV boxes (0-based, max exclusive), which is what
        # napari_sickle.io.read_voc returns unchanged, so boxes round-trip exactly
        ET.SubElement(bb, "xmin").text = str(int(row.x_min))
        ET.SubElement(bb, "ymin").text = str(int(row.y_min))
        ET.SubElement(bb, "xmax").text = str(int(row.x_max))
        ET.SubElement(bb, "ymax").text = str(int(row.y_max))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def write_dataset(
    out,
    layout: str = "pairs",
    n_images: int = 4,
    seed: int = 0,
    shape: tuple[int, int] = (1080, 1920),
    rgb: bool = True,
    crops_root=None,
    n_cells: int | None = None,
    progress=None,
    edge_cells: bool | None = None,
    style: str = "pink",
) -> dict:
    """Write a dataset in ``layout`` under ``out``; returns a summary dict (also printed by the CLI).

    ``edge_cells`` (None: the generator's default) lets cells run off the image edge.
    ``style`` sets the stain colours of simulated smears (``data.simulate.STAIN_STYLES`` or "auto").
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; refusing to overwrite anything")
    out.mkdir(parents=True, exist_ok=True)
    crops = None
    if crops_root is not None and layout != "crops":
        from ..data.compose import load_crops

        crops = load_crops(crops_root)
    t0 = time.perf_counter()
    fn = {"pairs": _write_pairs, "voc": _write_voc, "crops": _write_crops, "patches": _write_patches}[layout]
    from functools import partial

    make = partial(
        _smear, seed=seed, shape=tuple(shape), rgb=rgb, crops=crops, n_cells=n_cells, edge_cells=edge_cells, style=style
    )
    summary = fn(out, n_images, seed, make, rgb, progress)
    summary.update({"layout": layout, "out": str(out), "seed": seed, "seconds": round(time.perf_counter() - t0, 2)})
    if crops is not None:
        summary["composed_from"] = str(crops_root)
    return summary


def _write_pairs(out, n, seed, make, rgb, progress):
    import tifffile

    from ..io.formats import write_regions_csv

    cell_rows, n_regions, n_total = [], 0, 0
    for i in range(n):
        sm = make(i)
        name = f"sim_{seed}_{i:04d}"
        sm.regions["image"] = f"{name}.png"
        _imwrite(out / "images" / f"{name}.png", sm.image)
        _imwrite(out / "masks" / f"{name}.png", ((sm.instances > 0) * 255).astype(np.uint8))
        (out / "instances").mkdir(exist_ok=True)
        tifffile.imwrite(out / "instances" / f"{name}.tif", sm.instances.astype(np.int32), compression="zlib")
        write_regions_csv(sm.regions, out / "regions" / f"{name}.csv")
        c = sm.cells[["cell_id", "type", "region_id", "x_min", "y_min", "x_max", "y_max", "area"]].copy()
        c.insert(0, "image", f"{name}.png")
        cell_rows.append(c)
        n_regions += len(sm.regions)
        n_total += sm.n_cells
        if progress:
            progress("write images", i + 1, n)
    pd.concat(cell_rows, ignore_index=True).to_csv(out / "cells.csv", index=False)
    return {"images": n, "cells": n_total, "regions": n_regions}


def _write_voc(out, n, seed, make, rgb, progress):
    from ..io.formats import write_regions_csv

    rng = np.random.default_rng(seed)
    names, all_regions = [], []
    for i in range(n):
        sm = make(i)
        name = f"sim_{seed}_{i:04d}"
        sm.regions["image"] = f"{name}.jpg"
        _imwrite(out / "JPEGImages" / f"{name}.jpg", sm.image, quality=95)
        xml = _voc_xml(f"{name}.jpg", sm.image.shape, sm.image.shape[2] if sm.image.ndim == 3 else 1, sm.regions)
        (out / "Annotations").mkdir(exist_ok=True)
        (out / "Annotations" / f"{name}.xml").write_text(xml, encoding="utf-8")
        names.append(name)
        all_regions.append(sm.regions)
        if progress:
            progress("write images", i + 1, n)
    order = rng.permutation(n)
    n_val = max(1, int(round(0.2 * n))) if n > 1 else 0
    val = sorted(names[k] for k in order[:n_val])
    train = sorted(names[k] for k in order[n_val:])
    (out / "train.txt").write_text("".join(f"{s}\n" for s in train), encoding="utf-8")
    (out / "val.txt").write_text("".join(f"{s}\n" for s in val), encoding="utf-8")
    regions = pd.concat(all_regions, ignore_index=True)
    write_regions_csv(regions, out / "regions.csv")
    return {"images": n, "regions": len(regions), "train": len(train), "val": len(val)}


def _write_crops(out, n, seed, make, rgb, progress):
    from ..data.simulate import simulate_cell_details

    rng = np.random.default_rng(seed)
    counts = {}
    total = n * sum(len(v) for v in _CROP_FOLDERS.values())
    done = 0
    for t, folders in _CROP_FOLDERS.items():
        for folder in folders:
            for k in range(n):
                # draw until the shape variant matches the folder (oval vs disc, sickle vs elongated)
                for _ in range(50):
                    d = float(np.clip(rng.normal(62, 9), 45, 85))
                    img, mask, variant = simulate_cell_details(t, d, rng, rgb=rgb)
                    if variant == folder or len(folders) == 1:
                        break
                _imwrite(out / folder / f"sim{seed}_{folder}_{k:05d}.png", img)
                counts[folder] = counts.get(folder, 0) + 1
                done += 1
                if progress:
                    progress("write crops", done, total)
    return {"crops": int(sum(counts.values())), "per_folder": counts}


def _write_patches(out, n, seed, make, rgb, progress, margin: int = 4):
    rows = []
    i = 0
    while len(rows) < n:
        sm = make(i)
        H, W = sm.image.shape[:2]
        for r in sm.regions.itertuples(index=False):
            if len(rows) >= n:
                break
            y0, y1 = max(0, r.y_min - margin), min(H, r.y_max + margin)
            x0, x1 = max(0, r.x_min - margin), min(W, r.x_max + margin)
            fname = f"patches/sim_{seed}_{i:04d}_r{int(r.region_id):04d}.png"
            _imwrite(out / fname, sm.image[y0:y1, x0:x1])
            rows.append(
                {
                    "path": fname,
                    **{t: int(getattr(r, t)) for t in RBC_TYPES},
                    "n_cells": int(r.n_cells),
                    "image": f"sim_{seed}_{i:04d}",
                    "region_id": int(r.region_id),
                }
            )
            if progress:
                progress("write patches", len(rows), n)
        i += 1
    df = pd.DataFrame(rows)
    df.to_csv(out / "patches.csv", index=False)
    return {"patches": len(df), "multi_cell": int((df["n_cells"] > 1).sum()), "smears": i}


def _parse_shape(s: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--shape must look like 1080x1920 (HxW), got {s!r}") from exc
    if h < 64 or w < 64:
        raise argparse.ArgumentTypeError(f"--shape {s!r} is too small (at least 64x64)")
    return h, w


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m napari_sickle.simulate",
        description="Write simulated blood-smear datasets in the folder layouts napari-sickle reads.",
    )
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.add_argument(
        "--n-images",
        type=int,
        default=4,
        help="images (pairs/voc), crops per class folder (crops) or patches (patches)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=LAYOUTS, default="pairs")
    p.add_argument("--shape", type=_parse_shape, default=(1080, 1920), help="image size HxW (default 1080x1920)")
    p.add_argument("--n-cells", type=int, default=None, help="cells per smear (default ~200 per 1920x1080)")
    p.add_argument("--gray", action="store_true", help="grayscale images (like the Xu et al. crops)")
    p.add_argument("--crops", default=None, help="compose smears/patches from this class-per-folder crop set")
    p.add_argument(
        "--edge-cells",
        dest="edge_cells",
        action="store_true",
        default=None,
        help="let cells run off the image edge (default: off when drawn, on when composed)",
    )
    p.add_argument("--no-edge-cells", dest="edge_cells", action="store_false")
    p.add_argument(
        "--style",
        default="pink",
        help="stain colours of simulated smears: pink, wright-grey, wright-teal, giemsa-lilac or auto (one per image)",
    )
    p.add_argument("--json-progress", action="store_true", help="one JSON object per line instead of a bar")
    a = p.parse_args(argv)

    bar = None
    if a.json_progress:

        def progress(stage, done, total):
            print(json.dumps({"event": "progress", "stage": stage, "done": done, "total": total}), flush=True)
    else:
        from tqdm import tqdm

        current = [None]

        def progress(stage, done, total):
            nonlocal bar
            if bar is None or current[0] != stage:
                if bar is not None:
                    bar.close()
                current[0] = stage
                bar = tqdm(total=total, desc=stage, file=sys.stderr, disable=not sys.stderr.isatty())
            bar.n = done
            bar.refresh()

    try:
        summary = write_dataset(
            a.out,
            a.layout,
            a.n_images,
            a.seed,
            a.shape,
            rgb=not a.gray,
            crops_root=a.crops,
            n_cells=a.n_cells,
            progress=progress,
            edge_cells=a.edge_cells,
            style=a.style,
        )
    except (ValueError, FileExistsError, OSError) as exc:
        if bar is not None:
            bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if bar is not None:
        bar.close()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
