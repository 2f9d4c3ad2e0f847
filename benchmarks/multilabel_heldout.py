"""Held-out evaluation sets for a `train multilabel` run on class folders (docs/results.md).

Re-creates the validation split that `train multilabel` makes with its defaults (80/20,
stratified by type, ``--seed``), so none of these crops was in a training patch, and writes:

* ``OUT/crops/<class folder>/``: the validation crops (symlinks), for
  ``evaluate multilabel --data OUT/crops`` (single cells);
* ``OUT/patches/`` + ``OUT/patches.csv``: ``--n`` new multi-cell patches of 2-4
  touching/overlapping cells composed from those crops only (``data.compose.compose_patches``,
  seed ``--patch-seed``), as a multi-label patch table for ``evaluate multilabel``;
* ``OUT/smear_patches.csv``: the multi-cell regions (2+ cells) of smears composed from those
  crops, cut with a 4 px margin as ``python -m napari_sickle.simulate --layout patches``
  writes them (a region there can hold more than 4 cells, and its box can hold pieces of
  neighbouring regions).

    python benchmarks/multilabel_heldout.py --data $SICKLE_DATA/sickle-rbc --out runs/heldout
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0, help="the --seed of the train multilabel run")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--patch-seed", type=int, default=777)
    ap.add_argument("--n-smear-patches", type=int, default=200)
    a = ap.parse_args(argv)

    import imageio.v3 as iio

    from napari_sickle.cli.simulate import write_dataset
    from napari_sickle.constants import RBC_TYPES
    from napari_sickle.data.compose import compose_patches, load_crops
    from napari_sickle.training.multilabel import _split, load_patches

    out = Path(a.out)
    ps = load_patches(a.data, seed=a.seed)
    _, va = _split(ps, a.val_fraction, a.seed)
    for i in va:
        src = Path(ps.names[i]).resolve()
        dst = out / "crops" / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.symlink(src, dst)
    crops = load_crops(out / "crops")
    rows = []
    (out / "patches").mkdir(parents=True, exist_ok=True)
    for j, (img, types, n) in enumerate(compose_patches(crops, a.n, seed=a.patch_seed, min_cells=2, max_cells=4)):
        name = f"patches/p{j:04d}.png"
        iio.imwrite(out / name, img)
        rows.append({"path": name, **{t: int(v) for t, v in zip(RBC_TYPES, types)}, "n_cells": int(n)})
    pd.DataFrame(rows).to_csv(out / "patches.csv", index=False)
    print(f"{len(va)} validation crops in {out / 'crops'}; {len(rows)} patches in {out / 'patches.csv'}")

    sm = out / "smears"
    if not (sm / "patches.csv").is_file():
        write_dataset(sm, layout="patches", n_images=4 * a.n_smear_patches, seed=a.patch_seed, crops_root=out / "crops")
    df = pd.read_csv(sm / "patches.csv")
    multi = df[df["n_cells"] > 1].head(a.n_smear_patches).copy()
    multi["path"] = [str((sm / p).resolve()) for p in multi["path"]]
    multi.to_csv(out / "smear_patches.csv", index=False)
    print(
        f"{len(multi)} multi-cell smear regions in {out / 'smear_patches.csv'} "
        f"(cells per region: {multi['n_cells'].describe()[['min', '50%', 'max']].to_dict()})"
    )


if __name__ == "__main__":
    main()
