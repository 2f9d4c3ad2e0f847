"""Scores and speed of an RBC classifier on the real-cell validation splits.

    python benchmarks/bench_real_classifier.py CLASSIFIER.pt [--data $SICKLE_DATA] [--threads 2]
                                               [--patches 300] [--seed 7] [--no-speed]

Validation splits (napari_sickle.data.real_cells): Xu et al. patient ``XU_VAL_PATIENTS``;
Chula RBC-12 images ``n % 5 == 0``. Everything goes through ``RBCClassifier.predict_boxes``
(the inference path: cell split, canvases, views, heads) and ``abnormal_proba``. Prints one
JSON object:

* ``xu_single``: exact match of the six types on the validation patient's single crops;
* ``xu_multi_*``: exact match on multi-cell patches composed from those held-out crops by a
  composer written here, independent of the training composers: cells rotated/scaled,
  dropped at random around the cluster and pasted opaque (the later cell hides the earlier),
  a patch kept when its cells form one region and each keeps at least ``min_visible`` of
  its area visible (``_light``: 0.9, ``_heavy``: 0.6), label = union of the cells' types;
  ``xu_multi_project_composer``: the project's ``compose_patches`` for reference;
* ``chula``: mapped validation cells, each cut out alone (``clean``, as in training) and as
  the box of its territory in the unaltered smear (``in_smear``: neighbours' pieces
  included): exact type match, normal (class 0) called normal, ovalocyte called normal,
  mapped abnormal classes called abnormal; ``unmapped_called_abnormal``: the fraction of
  each unmapped class called abnormal (no target; information);
  ``sickle_called``: the share of the items labelled Elongated/Sickle with that probability at
  0.5 and at 0.9 (the sure calls the SCD rule counts);
* ``bccd``: the annotated red-cell boxes of the BCCD ``val.txt`` photos (another lab's camera:
  crowded, paler and softer cells, refractile specks), classified in the photo. BCCD has no
  type labels, so there is no target: the share called abnormal, the share with no type and
  the share of each type (by eye most of these cells are normal discocytes), read as the photo
  is (``as_is``) and as the Analyze button reads them (``analyze``: uncertain photos read again
  with their cell lightness matched to the training smears);
* ``speed``: classification of the truth regions of a 1920x1080 simulated smear (seed 2026,
  as ``bench_analyze.py``), batched vs one region at a time, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

#: the held-out multi-cell sets: name -> the least visible share of each cell
OVERLAP_SETS = {"light": 0.9, "heavy": 0.6}


def overlap_set(crops, n: int, seed: int, name: str, keep_cells: bool = False):
    """The benchmark's ``name`` set (:data:`OVERLAP_SETS`) of ``n`` patches at base ``seed``:
    the same patches in every benchmark that asks for it."""
    mv = OVERLAP_SETS[name]
    return independent_patches(crops, n, seed + int(mv * 10), mv, keep_cells=keep_cells)


def independent_patches(crops, n, seed, min_visible, max_cells=4, keep_cells=False):
    """Multi-cell patches from single crops (see the module docstring); (image, types, k), and
    with ``keep_cells`` a fourth item: each cell alone, pasted the same way on the patch's
    background (:func:`cell_alone`), i.e. the patch's cells as if nothing hid them."""
    from napari_sickle.constants import RBC_TYPES

    rng = np.random.default_rng(seed)
    out, tries = [], 0
    while len(out) < n and tries < 200 * n:
        tries += 1
        k = int(rng.integers(2, max_cells + 1))
        picks = [crops[int(i)] for i in rng.integers(0, len(crops), k)]
        cells = []
        for c in picks:
            ang = float(rng.uniform(0, 360))
            s = float(rng.uniform(0.9, 1.1))
            img = ndi.zoom(c.image.astype(np.float32), (s, s, 1), order=1)
            m = ndi.zoom(c.mask.astype(np.float32), (s, s), order=1)
            img = ndi.rotate(img, ang, reshape=True, order=1, mode="nearest")
            m = ndi.rotate(m, ang, reshape=True, order=1) > 0.5
            if rng.random() < 0.5:
                img, m = img[:, ::-1], m[:, ::-1]
            cells.append((img, m, c.type_index, np.median(c.image[~ndi.binary_dilation(c.mask, iterations=2)], axis=0)))
        size = sum(max(m.shape) for _, m, _, _ in cells) * 2
        bg = np.median([b for *_, b in cells], axis=0)
        canvas = np.empty((size, size, 3), np.float32)
        canvas[:] = bg
        owner = np.zeros((size, size), np.int32)
        ok = True
        centre = np.array([size / 2, size / 2])
        for j, (img, m, _t, _b) in enumerate(cells):
            h, w = m.shape
            r = np.sqrt(m.sum() / np.pi)
            if j == 0:
                cy, cx = centre
            else:
                ys, xs = np.nonzero(owner)
                q = int(rng.integers(len(ys)))  # a random pixel of the cluster; this cell overlaps it
                a = float(rng.uniform(0, 2 * np.pi))
                d = float(rng.uniform(0.3, 1.0)) * r
                cy, cx = ys[q] + d * np.sin(a), xs[q] + d * np.cos(a)
            top, left = int(cy - h / 2), int(cx - w / 2)
            if top < 0 or left < 0 or top + h > size or left + w > size:
                ok = False
                break
            trial = owner.copy()
            trial[top : top + h, left : left + w][m] = j + 1
            area = np.array([cm.sum() for _, cm, _, _ in cells[: j + 1]], float)
            vis = np.bincount(trial.ravel(), minlength=j + 2)[1 : j + 2]
            if (vis < min_visible * area).any() or ndi.label(trial > 0)[1] != 1:
                ok = False
                break
            owner = trial
            a_ = ndi.gaussian_filter(m.astype(np.float32), 0.6)[..., None]
            sub = canvas[top : top + h, left : left + w]
            canvas[top : top + h, left : left + w] = sub * (1 - a_) + img * a_
        if not ok:
            continue
        ys, xs = np.nonzero(owner)
        y0, y1, x0, x1 = max(ys.min() - 5, 0), ys.max() + 6, max(xs.min() - 5, 0), xs.max() + 6
        patch = np.clip(canvas[y0:y1, x0:x1] + rng.normal(0, 1.5, canvas[y0:y1, x0:x1].shape), 0, 255).astype(np.uint8)
        types = np.zeros(len(RBC_TYPES), int)
        types[[t for _, _, t, _ in cells]] = 1
        if keep_cells:
            out.append((patch, types, k, [cell_alone(img, m, bg, len(out)) for img, m, _t, _b in cells]))
        else:
            out.append((patch, types, k))
    return out


def cell_alone(img, mask, bg, seed: int) -> np.ndarray:
    """One transformed cell of :func:`independent_patches` pasted alone on ``bg`` as the
    composer pastes it (soft mask edge, 5 px margin, the same noise), uint8."""
    h, w = mask.shape
    canvas = np.empty((h + 10, w + 10, 3), np.float32)
    canvas[:] = bg
    a_ = ndi.gaussian_filter(mask.astype(np.float32), 0.6)[..., None]
    canvas[5 : 5 + h, 5 : 5 + w] = canvas[5 : 5 + h, 5 : 5 + w] * (1 - a_) + img * a_
    ys, xs = np.nonzero(mask)
    canvas = canvas[ys.min() : ys.max() + 11, xs.min() : xs.max() + 11]
    noise = np.random.default_rng(seed).normal(0, 1.5, canvas.shape)
    return np.clip(canvas + noise, 0, 255).astype(np.uint8)


def _exact(clf, items):
    """items: (image, box or None, types) -> exact match, n."""
    if not items:
        return None
    hits, sickle = [], []  # sickle: Elongated/Sickle probability of the items labelled so
    for img, box, y in items:
        h, w = img.shape[:2]
        b = np.array([box if box is not None else [0, 0, w, h]], np.float32)
        p = clf.predict_boxes(img, b)[0]
        hits.append(bool(np.all((p >= 0.5) == (np.asarray(y) >= 0.5))))
        if y[1] >= 0.5:
            sickle.append(float(p[1]))
    out = {"exact_match": round(float(np.mean(hits)), 4), "n": len(hits)}
    if sickle:  # what the SCD rule's sure calls (p >= 0.9) keep of the real sickle cells
        out["sickle_called"] = {t: round(float(np.mean(np.array(sickle) >= t)), 4) for t in (0.5, 0.9)}
    return out


def chula_smears(root):
    """``(image id, RGB uint8, points)`` of every Chula validation smear with labelled points."""
    from napari_sickle.data.real_cells import chula_is_val, read_chula_points
    from napari_sickle.io.images import read_image, to_rgb_uint8

    for lf in sorted((Path(root) / "Label").glob("*.txt"), key=lambda p: int(p.stem)):
        ip = Path(root) / "Dataset" / f"{lf.stem}.jpg"
        if not chula_is_val(lf.stem) or not ip.exists():
            continue
        pts = read_chula_points(lf)
        if len(pts):
            yield lf.stem, to_rgb_uint8(read_image(ip)), pts


def chula_scores(clf, root):
    from napari_sickle.data.real_cells import cut_cell, smear_cell_labels

    rows = []  # (mode, class_id, probs)
    for _name, rgb, pts in chula_smears(root):
        labels, bg = smear_cell_labels(rgb, pts)
        areas = np.bincount(labels.ravel(), minlength=len(pts) + 1)[1:]
        med = float(np.median(areas[areas > 0]))
        objs = ndi.find_objects(labels)
        boxes, keep = [], []
        for k in range(len(pts)):
            if k >= len(objs) or objs[k] is None or not (0.3 * med <= areas[k] <= 2.5 * med):
                continue
            sl = objs[k]
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
            keep.append(k)
        if not keep:
            continue
        p_in = clf.predict_boxes(rgb, np.asarray(boxes, np.float32))
        for j, k in enumerate(keep):
            crop, _m = cut_cell(rgb, labels, k, bg)
            p_clean = clf.predict_boxes(crop, np.array([[0, 0, crop.shape[1], crop.shape[0]]], np.float32))[0]
            rows.append(("clean", int(pts[k, 2]), p_clean))
            rows.append(("in_smear", int(pts[k, 2]), p_in[j]))
    out = {}
    for mode in ("clean", "in_smear"):
        r = [x for x in rows if x[0] == mode]
        cls = np.array([c for _, c, _ in r])
        P = np.stack([p for *_, p in r])
        out[mode] = chula_metrics(cls, P, clf.abnormal_proba(P) >= 0.5)
    return out


def chula_metrics(cls, P, abn) -> dict:
    """The Chula aims on cells of Chula class ids ``cls`` with type probabilities ``P`` and
    abnormal calls ``abn``: exact type match on the mapped classes, normal (class 0) and
    ovalocyte called normal, mapped abnormal classes called abnormal, per class exact match,
    and the share of each unmapped class called abnormal (information, no target)."""
    from napari_sickle.data.real_cells import CHULA_CLASSES, chula_type_row

    cls, P, abn = np.asarray(cls), np.asarray(P), np.asarray(abn, bool)
    mapped = np.array([chula_type_row(c) is not None for c in cls])
    Y = np.stack([chula_type_row(c) for c in cls[mapped]])
    abnormal = np.isin(cls, [5, 8, 12])
    return {
        "exact_type_match": round(float(np.mean(np.all((P[mapped] >= 0.5) == (Y >= 0.5), axis=1))), 4),
        "n_mapped": int(mapped.sum()),
        "n_normal": int((cls == 0).sum()),
        "n_abnormal_mapped": int(abnormal.sum()),
        "normal_called_normal": round(float(np.mean(~abn[cls == 0])), 4),
        "ovalocyte_called_normal": round(float(np.mean(~abn[cls == 6])), 4),
        "abnormal_called_abnormal": round(float(np.mean(abn[abnormal])), 4),
        "per_class_exact": {
            CHULA_CLASSES[c]: round(
                float(np.mean(np.all((P[cls == c] >= 0.5) == (chula_type_row(c) >= 0.5), axis=1))), 4
            )
            for c in (0, 6, 5, 8, 12)
            if (cls == c).any()
        },
        "unmapped_called_abnormal": {
            CHULA_CLASSES[c]: round(float(np.mean(abn[cls == c])), 3) for c in sorted(set(cls[~mapped].tolist()))
        },
    }


def bccd_calls(clf, root) -> dict:
    """Calls on the annotated RBC boxes of the BCCD validation photos (see the module docstring):
    read as the photo is (``as_is``) and as the Analyze button reads them
    (``analysis.smear.classify_regions``: an uncertain photo is read again with its cell
    lightness matched to the training smears)."""
    from napari_sickle.analysis.smear import classify_regions
    from napari_sickle.data.real_smears import load_real_smears

    items = [it for it in load_real_smears(root, "val", sources=("bccd",)) if len(it["boxes"])]
    plain = np.concatenate([clf.predict_boxes(it["image"], it["boxes"].astype(np.float32)) for it in items])
    read = [classify_regions(it["image"], it["boxes"].astype(np.float32), clf) for it in items]
    out = {
        "n_photos": len(items),
        "as_is": _calls(clf, plain),
        "analyze": _calls(clf, np.concatenate([p for p, _ in read])),
    }
    out["analyze"]["photos_lightness_matched"] = int(sum(m for _, m in read))
    return out


def _calls(clf, P) -> dict:
    from napari_sickle.constants import RBC_TYPES

    on = P >= 0.5
    return {
        "n_boxes": int(len(P)),
        "called_abnormal": round(float(np.mean(clf.abnormal_proba(P) >= 0.5)), 4),
        "no_type": round(float(np.mean(~on.any(axis=1))), 4),
        "type_share": {t: round(float(on[:, j].mean()), 4) for j, t in enumerate(RBC_TYPES)},
    }


def speed(clf, threads):
    from napari_sickle.data.simulate import simulate_smear

    sm = simulate_smear(seed=2026)
    boxes = sm.regions[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float32)
    img = sm.image
    clf.predict_boxes(img, boxes[:8])
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        pb = clf.predict_boxes(img, boxes)
        clf.abnormal_proba(pb)
        ts.append(time.perf_counter() - t)
    t = time.perf_counter()
    ps = np.concatenate([clf.predict_boxes(img, boxes[i : i + 1], batch_size=1) for i in range(len(boxes))])
    single = time.perf_counter() - t
    return {
        "n_regions": int(len(boxes)),
        "image": list(img.shape[:2]),
        "threads": threads,
        "batched_seconds_median": round(float(np.median(ts)), 3),
        "one_at_a_time_seconds": round(single, 3),
        "batched_equals_single": bool(np.allclose(pb, ps, atol=1e-4)),
        "loadavg": os.getloadavg(),
    }


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("classifier")
    ap.add_argument("--data", default=os.environ.get("SICKLE_DATA", "../shared/data"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--patches", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--tta", default=None, help="override the checkpoint's views (none, hflip, flip4, d4)")
    a = ap.parse_args(argv)
    import torch

    from napari_sickle._malloc import tune_malloc

    tune_malloc()
    torch.set_num_threads(a.threads)
    from napari_sickle.data.compose import compose_patches
    from napari_sickle.data.real_cells import XU_VAL_PATIENTS, to_crops, xu_cells
    from napari_sickle.models.multilabel import RBCClassifier

    clf = RBCClassifier.from_checkpoint(a.classifier)
    if a.tta:
        clf.config["tta"] = a.tta
    data = Path(a.data)
    t0 = time.time()
    out = {
        "classifier": a.classifier,
        "tta": clf.tta,
        "input_size": clf.input_size,
        "xu_val_patients": list(XU_VAL_PATIENTS),
    }
    if not a.no_speed:
        out["speed"] = speed(clf, a.threads)
    xs = xu_cells(data / "sickle-rbc", split="val")
    out["xu_single"] = _exact(clf, [(c.image, None, c.y) for c in xs])
    crops = to_crops(xs)
    for name, mv in OVERLAP_SETS.items():
        pats = overlap_set(crops, a.patches, a.seed, name)
        out[f"xu_multi_{name}"] = _exact(clf, [(p, None, t) for p, t, _ in pats])
        out[f"xu_multi_{name}"]["min_visible"] = mv
    pp = compose_patches(crops, a.patches, seed=a.seed, min_cells=2)
    out["xu_multi_project_composer"] = _exact(clf, [(p, None, t) for p, t, _ in pp])
    out["chula"] = chula_scores(clf, data / "chula-rbc12")
    out["bccd"] = bccd_calls(clf, data)
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
