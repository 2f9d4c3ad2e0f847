"""Train and evaluate the Faster R-CNN region detector; AP50 as in Pascal VOC.

Data (``data``):

* ``"simulated"``: simulated smears; one box per connected region of the cell mask (the paper's
  boxes), class "cell region";
* an ``images/`` + ``masks/`` folder (or ``*_img``/``*_mask`` pairs): boxes from the connected
  regions of each binary mask (``io.masks.mask_to_regions``), class "cell region";
* ``"composed:<crop folder>"`` / ``"composed-test:<crop folder>"``: smears composed from real
  single-cell crops (e.g. sickle-rbc) of the training patients / of the held-out patient
  (:func:`split_crops`), so test smears never reuse a training crop;
* ``"real"`` / ``"real:<folder>"``: real smears from several public sources under the folder
  (default ``$SICKLE_DATA``; ``data.real_smears``): BCCD RBC boxes, BBBC041Seg mask regions,
  Chula RBC-12 boxes derived from its point labels; each source's own validation split
  (by image) validates. Every image carries its estimated cell diameter, and with
  ``cell_diameter`` (the training diameter, e.g. 30) each is resized so its cells have that
  diameter; the diameter is stored in the checkpoint and ``RegionDetector.detect`` resizes
  every input the same way. Sources are sampled equally often (``source_balance``; or a dict
  of relative shares per source, e.g. ``{"bccd": 2, "bbbc041seg": 1, "chula-rbc12": 1}``); the
  per-epoch metric is the mean of BCCD AP50, BBBC041 AP50 and the share of Chula points inside
  a box scoring >= 0.5;
* a Pascal VOC folder (``JPEGImages/`` + ``Annotations/``): its boxes and class names
  (degenerate boxes are dropped with a warning by ``io.formats.read_voc``); ``train.txt`` /
  ``val.txt`` give the split when present. ``classes=[...]`` keeps only those classes.

Recipe: images are resized by the detector's ``scale`` (CPU default 0.5), the network trains
on random ``crop_size`` crops (random flips, colour jitter), AdamW (lr 1e-4 by default), batch 2; validation AP50 on whole
images after every epoch; ``best.pt`` keeps the best AP50. With VOC ``train.txt``/``val.txt`` the
validation images are a ``val_fraction`` part of the train split (``validate_on="train"``, the
default), so ``val.txt`` stays an unseen test split; ``validate_on="val"`` validates on it.

Further options: ``rot90=True`` adds random transposes to the flips (all 8 rotations/reflections);
``ema`` (a decay, e.g. 0.99; 0 = off) validates and saves an exponential moving average of the
weights and BatchNorm statistics (``torch.optim.swa_utils.AveragedModel``; ``last.pt`` also keeps
the raw weights for ``--resume``); ``tta`` (``"flips"`` / ``"dihedral"``) stores test-time views
in the checkpoint (``models.detector.fuse_tta``), which ``evaluate`` and ``analyze_smear`` then
apply (per-epoch validation stays on the raw detections; the best epoch is validated once more
with the views at the end, ``metrics["val_tta"]``). Training-only options, recorded in the
recipe: ``scale_jitter`` (j: crops resized by a log-uniform factor in [1/(1+j), 1+j], or a
``[lo, hi]`` pair; off by default), ``min_visible`` (a box cut by the crop is kept when at least
this part of it is inside; 0.7), ``rpn_batch_size_per_image`` / ``rpn_positive_fraction`` /
``box_batch_size_per_image`` / ``box_positive_fraction`` (torchvision's proposal and RoI
samplers; None = the architecture's 256 / 0.5 / 128 / 0.25), ``color_aug`` (True: stain and
camera augmentation on top of the gain/brightness/contrast jitter: hue rotation, saturation,
gamma, grayscale 15% of crops, Gaussian blur 20%; off by default), ``val_limit`` (at most this
many validation images per source, for ``real`` data). The schedule is OneCycle (10% warm-up
to ``lr``, then cosine decay) over ``epochs`` x ``iters_per_epoch`` steps.

Options for composed smears: ``cluster_fraction`` (compose_smear's share of cells placed touching
another; training smears only) and ``region_merge`` (True or a dict of
``models.detector.REGION_MERGE_DEFAULTS`` keys): store the "one box per connected region"
post-processing in the checkpoint, so validation, ``evaluate`` and ``analyze_smear`` all apply it.
Leave it off for per-cell boxes (BCCD). ``evaluate_detector(..., region_merge=False)`` scores
the raw detections of such a model.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

REGION_CLASS = "cell region"


# ------------------------------------------------------------------------------------------
# AP50
# ------------------------------------------------------------------------------------------
def average_precision(dets: list[tuple[np.ndarray, np.ndarray]], gts: list[np.ndarray], iou_threshold: float = 0.5):
    """Pascal VOC all-point AP for one class.

    dets: per image (boxes (n,4), scores (n,)); gts: per image boxes (m,4) (x_min, y_min,
    x_max, y_max). Detections of all images are ranked by score; each is a true positive if it
    overlaps a not-yet-matched ground-truth box of its image with IoU >= ``iou_threshold``
    (the best-overlapping one), else a false positive. AP is the area under the precision
    envelope (precision made monotone) over recall. Returns (ap, n_gt); AP is None if n_gt == 0.
    """
    n_gt = int(sum(len(g) for g in gts))
    recs = []
    for i, (b, s) in enumerate(dets):
        for j in range(len(s)):
            recs.append((float(s[j]), i, j))
    if n_gt == 0:
        return None, 0
    if not recs:
        return 0.0, n_gt
    recs.sort(key=lambda r: -r[0])
    matched = [np.zeros(len(g), bool) for g in gts]
    tp = np.zeros(len(recs))
    for k, (_, i, j) in enumerate(recs):
        g = np.asarray(gts[i], dtype=np.float64).reshape(-1, 4)
        if len(g) == 0:
            continue
        ious = _iou_one(np.asarray(dets[i][0][j], dtype=np.float64), g)
        ious[matched[i]] = -1
        m = int(np.argmax(ious))
        if ious[m] >= iou_threshold:
            matched[i][m] = True
            tp[k] = 1
    ctp = np.cumsum(tp)
    cfp = np.cumsum(1 - tp)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1])), n_gt


def _iou_one(box, boxes):
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    a = (box[2] - box[0]) * (box[3] - box[1])
    b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(a + b - inter, 1e-12)


def ap50(predictions, targets, class_names) -> dict:
    """AP50 per class and their mean.

    predictions: per image (boxes, scores, labels 1-based); targets: per image (boxes, labels
    1-based). Returns {"ap50", "ap50_per_class", "n_images"}."""
    per = {}
    for c, name in enumerate(class_names, start=1):
        dets = [(np.asarray(b)[np.asarray(lab) == c], np.asarray(s)[np.asarray(lab) == c]) for b, s, lab in predictions]
        gts = [np.asarray(b).reshape(-1, 4)[np.asarray(lab) == c] for b, lab in targets]
        ap, n_gt = average_precision(dets, gts, 0.5)
        if ap is not None:
            per[name] = ap
    return {
        "ap50": float(np.mean(list(per.values()))) if per else None,
        "ap50_per_class": per,
        "n_images": int(len(targets)),
    }


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
def load_detection_data(
    data,
    *,
    seed: int = 0,
    n_smears: int = 6,
    classes=None,
    split=None,
    progress=None,
    smear_shape=(1080, 1920),
    compose_options=None,
):
    """Images with boxes: (list of dict(image (H,W,3) uint8, boxes (m,4), labels (m,) 1-based, name),
    class_names, split list or None). ``compose_options``: extra ``compose_smear`` keywords for
    ``composed:`` training smears (e.g. ``cluster_fraction``); ``composed-test:`` ignores them."""
    from ..io.datasets import DatasetError

    items = []
    if isinstance(data, str) and (data == "real" or data.startswith("real:")):
        from ..data.real_smears import load_real_smears

        root = data.split(":", 1)[1] if ":" in data else None
        items = load_real_smears(root, "train", progress=progress) + load_real_smears(root, "val", progress=progress)
        if not items:
            raise DatasetError(f"{data}: none of bccd/, bbbc041seg/, chula-rbc12/ found")
        return items, [REGION_CLASS], [it["split"] for it in items]
    if isinstance(data, str) and data.split(":", 1)[0] in ("composed", "composed-test") and ":" in data:
        return _composed_items(
            data,
            seed=seed,
            n_smears=n_smears,
            smear_shape=smear_shape,
            progress=progress,
            compose_options=compose_options,
        )
    if isinstance(data, str) and data == "simulated":
        from ..data.simulate import simulate_smear

        for k in range(n_smears):
            sm = simulate_smear(seed=seed * 1000 + k, shape=smear_shape)
            b = sm.regions[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float32)
            items.append(
                {
                    "image": sm.image,
                    "boxes": b,
                    "labels": np.ones(len(b), np.int64),
                    "name": f"simulated_seed{seed * 1000 + k}",
                }
            )
            if progress is not None:
                progress("simulate", k + 1, n_smears)
        return items, [REGION_CLASS], None
    root = Path(data)
    if not root.exists():
        raise DatasetError(f"{data}: does not exist")
    from ..io.images import read_image, to_rgb_uint8

    if (root / "JPEGImages").is_dir() or (root / "Annotations").is_dir():
        from ..io.datasets import scan_voc
        from ..io.formats import read_voc

        df = scan_voc(root)
        anns = []
        for r in df.itertuples(index=False):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore" if progress is None else "default")
                anns.append(read_voc(r.annotation))
        names = sorted({c for a in anns for c in a["class"].astype(str)})
        if classes:
            names = [c for c in classes]
        splits = list(df["split"]) if "split" in df.columns else None
        for i, (r, a) in enumerate(zip(df.itertuples(index=False), anns)):
            a = a[a["class"].astype(str).isin(names)]
            try:
                img = to_rgb_uint8(read_image(r.image))
            except ValueError as exc:
                warnings.warn(f"skipped unreadable image {r.image}: {exc}")
                continue
            items.append(
                {
                    "image": img,
                    "boxes": a[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float32),
                    "labels": np.array([names.index(c) + 1 for c in a["class"].astype(str)], np.int64),
                    "name": Path(r.image).name,
                    "split": splits[i] if splits else "",
                }
            )
            if progress is not None:
                progress("load", i + 1, len(df))
        return items, names, [it.get("split", "") for it in items] if splits else None
    from ..io.datasets import scan_image_mask_pairs
    from ..io.masks import mask_to_regions, read_mask

    df = scan_image_mask_pairs(root)
    for i, r in enumerate(df.itertuples(index=False)):
        try:
            img = to_rgb_uint8(read_image(r.image))
            mask = read_mask(r.mask)
        except ValueError as exc:
            warnings.warn(f"skipped unreadable pair {r.image}: {exc}")
            continue
        _, reg = mask_to_regions(mask)
        b = reg[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float32)
        items.append({"image": img, "boxes": b, "labels": np.ones(len(b), np.int64), "name": Path(r.image).name})
        if progress is not None:
            progress("load", i + 1, len(df))
    if not items:
        raise DatasetError(f"{data}: no readable image/mask pairs")
    return items, [REGION_CLASS], None


def patient_of(path) -> str:
    """Patient / slide id of a sickle-rbc crop: the file name up to the first ``_``
    (``JH172_Im110_subImg12.png`` -> ``JH172``); ``""`` for names without ``_``."""
    name = Path(path).name
    return name.split("_", 1)[0] if "_" in name else ""  # no prefix: unknown patient


def split_crops(crops):
    """(train crops, held-out crops) split by patient: the patient ids (:func:`patient_of`) are
    sorted and the one at index ``len // 2`` is held out (sickle-rbc: ``JH17961115`` of
    JH172, JH1766915, JH17961115, JH18361915). With a single patient every 5th crop (sorted by
    path) is held out instead."""
    patients = sorted({patient_of(c.path) for c in crops})
    if len(patients) >= 2:
        held = patients[len(patients) // 2]
        return [c for c in crops if patient_of(c.path) != held], [c for c in crops if patient_of(c.path) == held]
    order = sorted(range(len(crops)), key=lambda i: str(crops[i].path))
    test = set(order[2::5])
    return [c for i, c in enumerate(crops) if i not in test], [c for i, c in enumerate(crops) if i in test]


_CROP_CACHE: dict = {}


def _composed_items(data: str, *, seed: int, n_smears: int, smear_shape, progress=None, compose_options=None):
    """``composed:<crop folder>``: ``n_smears`` smears composed (data.compose.compose_smear) from
    the training patients' crops; ``composed-test:<crop folder>``: from the held-out patient's
    crops only (see :func:`split_crops`). Boxes: one per connected region of the cell mask."""
    from ..data.compose import compose_smear, load_crops
    from ..io.datasets import DatasetError

    which, root = data.split(":", 1)
    key = str(Path(root).expanduser().resolve())
    if key not in _CROP_CACHE:
        if not Path(root).expanduser().is_dir():
            raise DatasetError(f"{data}: {root} is not a folder of class folders of crops")
        _CROP_CACHE[key] = split_crops(load_crops(Path(root).expanduser()))
    train_crops, test_crops = _CROP_CACHE[key]
    crops = test_crops if which == "composed-test" else train_crops
    if not crops:
        raise DatasetError(f"{data}: no crops in this split")
    items = []
    for k in range(int(n_smears)):
        s = seed * 1000 + k + (500 if which == "composed-test" else 0)
        extra = dict(compose_options or {}) if which == "composed" else {}
        sm = compose_smear(crops, seed=s, shape=tuple(smear_shape), **extra)
        b = sm.regions[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float32)
        items.append({"image": sm.image, "boxes": b, "labels": np.ones(len(b), np.int64), "name": f"{which}_seed{s}"})
        if progress is not None:
            progress("compose", k + 1, int(n_smears))
    return items, [REGION_CLASS], None


def _item_scale(item, scale, cell_diameter=None) -> float:
    """Resize factor of a training image: training ``cell_diameter`` / the image's estimated
    diameter (``item["diameter"]``) when both are known, else ``scale``."""
    if cell_diameter and item.get("diameter"):
        from ..models.scale import rescale_factor

        return rescale_factor(float(item["diameter"]), float(cell_diameter))
    return float(scale)


def _scaled(item, scale):
    """Image tensor (3,h,w) float in [0,1] and boxes resized by ``scale``."""
    import torch
    import torch.nn.functional as F

    img = torch.as_tensor(item["image"]).permute(2, 0, 1).float().div_(255.0)
    boxes = torch.as_tensor(np.array(item["boxes"], dtype=np.float32)).reshape(-1, 4)
    if scale != 1.0:
        h, w = img.shape[-2:]
        img = F.interpolate(
            img[None],
            size=(max(1, round(h * scale)), max(1, round(w * scale))),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )[0]
        boxes = boxes * scale
    return img, boxes, torch.as_tensor(item["labels"], dtype=torch.int64)


def _jitter_range(value):
    """``scale_jitter`` option -> (lo, hi) or None: a number j gives (1/(1+j), 1+j), a pair is
    taken as it is; None/0/False: off."""
    if value is None or value is False or value == 0:
        return None
    if isinstance(value, (int, float)):
        j = float(value)
        if j <= 0:
            raise ValueError(f"scale_jitter must be > 0, got {value!r}")
        return 1.0 / (1.0 + j), 1.0 + j
    lo, hi = (float(v) for v in value)
    if not 0 < lo <= hi:
        raise ValueError(f"scale_jitter range must satisfy 0 < lo <= hi, got {value!r}")
    return lo, hi


def _random_crop(img, boxes, labels, size, rng, min_visible=0.7, rot90=False, scale_jitter=None, color_aug=False):
    """A random ``size`` crop with its boxes (cells less than ``min_visible`` inside are dropped),
    random flips (and transposes), photometric jitter. ``scale_jitter`` (lo, hi): the crop is
    resized by a log-uniform factor in that range (a ``size / factor`` window, so the crop keeps
    about ``size`` pixels a side); None = no resize (and no random number drawn for it)."""
    import torch
    import torch.nn.functional as F

    _, h, w = img.shape
    f = 1.0
    if scale_jitter is not None:
        lo, hi = scale_jitter
        f = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        size = max(2, int(round(size / f)))
    ch, cw = min(size, h), min(size, w)
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    crop = img[:, y0 : y0 + ch, x0 : x0 + cw]
    b = boxes.clone()
    b[:, [0, 2]] = (b[:, [0, 2]] - x0).clamp(0, cw)
    b[:, [1, 3]] = (b[:, [1, 3]] - y0).clamp(0, ch)
    area0 = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area1 = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep = (area1 >= min_visible * area0.clamp(min=1e-6)) & ((b[:, 2] - b[:, 0]) >= 2) & ((b[:, 3] - b[:, 1]) >= 2)
    b, lab = b[keep], labels[keep]
    if f != 1.0:
        nh, nw = max(1, int(round(ch * f))), max(1, int(round(cw * f)))
        crop = F.interpolate(crop[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=f < 1.0)[0]
        b = b * torch.tensor([nw / cw, nh / ch, nw / cw, nh / ch], dtype=b.dtype)
        ch, cw = nh, nw
    if rng.random() < 0.5:
        crop = crop.flip(-1)
        b = torch.stack([cw - b[:, 2], b[:, 1], cw - b[:, 0], b[:, 3]], 1)
    if rng.random() < 0.5:
        crop = crop.flip(-2)
        b = torch.stack([b[:, 0], ch - b[:, 3], b[:, 2], ch - b[:, 1]], 1)
    if rot90 and rng.random() < 0.5:  # transpose: with the flips, all 8 rotations/reflections
        crop = crop.transpose(-1, -2)
        b = b[:, [1, 0, 3, 2]]
    # photometric jitter: per-channel gain, brightness and contrast (stains and lamps differ)
    gain = torch.as_tensor(rng.uniform(0.85, 1.15, size=3), dtype=crop.dtype).view(3, 1, 1)
    mean = crop.mean()
    crop = ((crop - mean) * float(rng.uniform(0.7, 1.3)) + mean * float(rng.uniform(0.85, 1.15))) * gain
    if color_aug:
        crop = _color_augment(crop.clamp(0, 1), rng)
    return crop.clamp(0, 1).contiguous(), {"boxes": b.reshape(-1, 4), "labels": lab}


def _color_augment(crop, rng):
    """Stain/camera augmentation of a (3, h, w) crop in [0, 1]: hue rotation (+-40 degrees about
    the gray axis), saturation x0.4-1.6, gamma 0.7-1.4, grayscale (15%), Gaussian blur sigma
    0.5-1.5 px (20%)."""
    import math

    import torch
    import torch.nn.functional as F

    a = math.radians(float(rng.uniform(-40, 40)))
    # rotation about the (1,1,1) axis (Rodrigues) = hue rotation keeping brightness
    k = 1.0 / math.sqrt(3.0)
    c, s_ = math.cos(a), math.sin(a)
    K = torch.tensor([[0, -k, k], [k, 0, -k], [-k, k, 0]], dtype=crop.dtype)
    R = torch.eye(3, dtype=crop.dtype) * c + s_ * K + (1 - c) * torch.full((3, 3), k * k, dtype=crop.dtype)
    crop = torch.einsum("ij,jhw->ihw", R, crop)
    gray = crop.mean(0, keepdim=True)
    crop = gray + (crop - gray) * float(rng.uniform(0.4, 1.6))
    crop = crop.clamp(0, 1) ** float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    if rng.random() < 0.15:
        crop = crop.mean(0, keepdim=True).expand(3, -1, -1)
    if rng.random() < 0.2:
        sigma = float(rng.uniform(0.5, 1.5))
        r = int(math.ceil(2 * sigma))
        x = torch.arange(-r, r + 1, dtype=crop.dtype)
        g = torch.exp(-(x**2) / (2 * sigma**2))
        g = g / g.sum()
        crop = F.conv2d(F.pad(crop[:, None], (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
        crop = F.conv2d(F.pad(crop, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1))[:, 0]
    return crop.contiguous()


def _split_items(items, splits, val_fraction, seed, validate_on="train"):
    """(train indices, validation indices). With train/val split files (VOC ``train.txt`` /
    ``val.txt``) and ``validate_on="train"`` (default) a ``val_fraction`` part of the train split
    validates and the val split is used neither for training nor for picking the best epoch
    (it stays a clean test split); ``validate_on="val"`` validates on the val split."""
    n = len(items)
    if splits and "val" in splits and "train" in splits:
        tr = [i for i, s in enumerate(splits) if s != "val"]
        va = [i for i, s in enumerate(splits) if s == "val"]
        if validate_on == "val":
            return tr, va
        if validate_on != "train":
            raise ValueError(f"validate_on must be 'train' or 'val', got {validate_on!r}")
        perm = np.random.default_rng(seed).permutation(len(tr))
        n_val = max(1, int(round(len(tr) * val_fraction))) if len(tr) > 1 else 0
        held = {tr[i] for i in perm[:n_val]}
        return [i for i in tr if i not in held] or sorted(held), sorted(held) or tr
    rng = np.random.default_rng(seed)
    idx = rng.permutation(n)
    n_val = max(1, int(round(n * val_fraction))) if n > 1 else 0
    va = sorted(idx[:n_val].tolist())
    tr = sorted(idx[n_val:].tolist()) or va
    return tr, va or tr


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
def predict_items(
    det, items, batch_size=2, score_threshold=0.05, progress=None, stage="validate", region_merge=None, tta=None
):
    """Run a RegionDetector over items; returns per image (boxes, scores, labels).
    ``region_merge`` / ``tta``: None = the checkpoint's setting, False / "none" = off (see models.detector)."""
    out = []
    for k, it in enumerate(items):
        out.append(
            det.detect(
                it["image"],
                score_threshold=score_threshold,
                nms_iou=0.5,
                batch_size=batch_size,
                region_merge=region_merge,
                tta=tta,
            )
        )
        if progress is not None:
            progress(stage, k + 1, len(items))
    return out


def train_detector(
    data,
    out,
    *,
    epochs=None,
    device="auto",
    backbone=None,
    seed=0,
    resume=None,
    folds=None,
    progress=None,
    log=None,
    scale: float | None = None,
    lr: float = 1e-4,
    batch_size: int = 2,
    crop_size: int = 512,
    iters_per_epoch: int | None = None,
    n_smears: int = 6,
    val_fraction: float = 0.2,
    classes=None,
    pretrained: bool = True,
    val_data=None,
    smear_shape=(1080, 1920),
    cluster_fraction: float | None = None,
    validate_on: str = "train",
    region_merge=None,
    tta=None,
    rot90: bool = False,
    ema: float = 0.0,
    scale_jitter=None,
    min_visible: float = 0.7,
    rpn_batch_size_per_image: int | None = None,
    rpn_positive_fraction: float | None = None,
    box_batch_size_per_image: int | None = None,
    box_positive_fraction: float | None = None,
    cell_diameter: float | None = None,
    color_aug: bool = False,
    source_balance: bool | dict = True,
    val_limit: int | None = None,
    **options,
) -> dict:
    """Train a Faster R-CNN region detector (see module docstring).

    ``backbone``: one of models.detector.ARCHS (default ``efficientnet-lite0-fpn``, whose ImageNet
    weights are available offline). ``scale``: input resize factor (default 0.5 for the CPU
    architectures, 1.0 for the ResNet ones). ``folds`` is not used for detectors.
    Returns {"checkpoint", "metrics", "history", "seconds"}.
    """
    import torch

    from .._device import detection_device, resolve_device
    from ..models.checkpoint import load_checkpoint, save_checkpoint
    from ..models.detector import RegionDetector, new_detector
    from . import distributed as ddp_glue

    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    epochs = int(epochs or 8)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = resolve_device(device)
    det_dev = detection_device(dev)
    emit = log or (lambda d: None)
    if tta is not None:  # a bad value fails before the data are read
        from ..models.detector import tta_mode

        tta = tta_mode(tta)
    jitter = _jitter_range(scale_jitter)
    min_visible = float(min_visible)
    resumed = None
    if resume is not None:
        if not Path(resume).is_file():
            raise FileNotFoundError(f"--resume: checkpoint {resume} does not exist")
        resumed = load_checkpoint(resume, kind="detector")

    compose_options = {} if cluster_fraction is None else {"cluster_fraction": float(cluster_fraction)}
    items, class_names, splits = load_detection_data(
        data,
        seed=seed,
        n_smears=n_smears,
        classes=classes,
        progress=progress,
        smear_shape=smear_shape,
        compose_options=compose_options,
    )
    by_source = bool(items) and all("source" in it for it in items)  # "real:" data: per-source splits
    if by_source and val_data is None:
        tr_items = [it for it in items if it["split"] != "val"]
        va_items = [it for it in items if it["split"] == "val"]
        if val_limit is not None:
            va_items = [
                it
                for src in dict.fromkeys(v["source"] for v in va_items)
                for it in [v for v in va_items if v["source"] == src][: int(val_limit)]
            ]
    elif val_data is not None:
        vitems, _, _ = load_detection_data(
            val_data, seed=seed + 1, n_smears=max(1, n_smears // 3), classes=class_names, smear_shape=smear_shape
        )
        tr_items, va_items = items, vitems
    else:
        tr, va = _split_items(items, splits, val_fraction, seed, validate_on)
        tr_items, va_items = [items[i] for i in tr], [items[i] for i in va]
    if resumed is not None:
        det = RegionDetector.from_checkpoint(resumed, device=det_dev)
        arch = det.config["arch"]
    else:
        arch = backbone or "efficientnet-lite0-fpn"
        if scale is None:
            scale = 0.5 if arch in ("efficientnet-lite0-fpn", "mobilenet-v3") else 1.0
        det = new_detector(arch, class_names=class_names, scale=scale, pretrained=pretrained, device=det_dev)
        if region_merge:  # stored in the checkpoint: evaluate and analyze_smear apply it too
            from ..models.detector import REGION_MERGE_DEFAULTS

            det.config["region_merge"] = {
                **REGION_MERGE_DEFAULTS,
                **(region_merge if isinstance(region_merge, dict) else {}),
            }
        if cell_diameter:  # stored: detect() resizes every image to this cell diameter
            det.config["cell_diameter"] = float(cell_diameter)
    if tta is not None:  # stored in the checkpoint: evaluate and analyze_smear apply it
        det.config["tta"] = tta
    scale = float(det.config["scale"])
    train_diameter = det.config.get("cell_diameter")
    prepared = [_scaled(it, _item_scale(it, scale, train_diameter)) for it in tr_items]
    weights = None
    if by_source and source_balance:  # each source equally often, whatever its number of images
        srcs = [it["source"] for it in tr_items]
        cnt = {k: srcs.count(k) for k in set(srcs)}
        share = (
            {k: float(source_balance.get(k, 0.0)) for k in cnt}
            if isinstance(source_balance, dict)
            else {k: 1.0 for k in cnt}
        )
        weights = np.array([share[k] / cnt[k] for k in srcs])
        weights /= weights.sum()
    n_boxes = int(sum(len(p[1]) for p in prepared))
    emit(
        {"event": "data", "n_train": len(tr_items), "n_val": len(va_items), "n_boxes": n_boxes, "classes": class_names}
    )
    if iters_per_epoch is None:
        px = sum(p[0].shape[-1] * p[0].shape[-2] for p in prepared)
        iters_per_epoch = max(4, int(np.ceil(px / (crop_size * crop_size) / batch_size)))
    samplers = {}  # training-only proposal/RoI sampling (torchvision BalancedPositiveNegativeSampler)
    for key, sampler, attr, val in (
        ("rpn_batch_size_per_image", det.model.rpn.fg_bg_sampler, "batch_size_per_image", rpn_batch_size_per_image),
        ("rpn_positive_fraction", det.model.rpn.fg_bg_sampler, "positive_fraction", rpn_positive_fraction),
        (
            "box_batch_size_per_image",
            det.model.roi_heads.fg_bg_sampler,
            "batch_size_per_image",
            box_batch_size_per_image,
        ),
        ("box_positive_fraction", det.model.roi_heads.fg_bg_sampler, "positive_fraction", box_positive_fraction),
    ):
        if val is not None:
            setattr(sampler, attr, type(getattr(sampler, attr))(val))
        samplers[key] = getattr(sampler, attr)
    params = [p for p in det.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    total_steps = epochs * iters_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=0.1)
    history, best, start_epoch = [], {"metric": -1.0, "epoch": 0}, 0
    if resumed is not None:
        ex = resumed["extra"]
        if "optimizer" in ex:
            opt.load_state_dict(ex["optimizer"])
        if "scheduler" in ex:
            sched.load_state_dict(ex["scheduler"])
            sched.total_steps = total_steps  # a resumed run may ask for more epochs
        history = list(ex.get("history", []))
        if (out / "best.pt").is_file():  # else the resumed run writes its own best.pt
            best = dict(ex.get("best", best))
        start_epoch = int(ex.get("epoch", -1)) + 1
        rng = np.random.default_rng(seed + start_epoch)
    det.recipe = {
        "arch": arch,
        "scale": scale,
        "optimizer": "AdamW",
        "lr": lr,
        "weight_decay": 1e-4,
        "schedule": "OneCycle",
        "epochs": epochs,
        "iters_per_epoch": iters_per_epoch,
        "batch_size": batch_size,
        "crop_size": crop_size,
        "augment": "random crop"
        + (", scale jitter" if jitter else "")
        + ", h/v flips"
        + (", transpose" if rot90 else "")
        + ", colour/brightness/contrast jitter",
        "ema": float(ema),
        "scale_jitter": list(jitter) if jitter else None,
        "min_visible": min_visible,
        "samplers": samplers,
        "seed": seed,
        "data": str(data),
        "cell_diameter": train_diameter,
        "color_aug": bool(color_aug),
        "source_balance": (dict(source_balance) if isinstance(source_balance, dict) else True)
        if by_source and source_balance
        else False,
        "boxes": "one per connected region of the cell mask" if class_names == [REGION_CLASS] else "VOC boxes",
        "pretrained_backbone": bool(pretrained),
        "compose_options": compose_options,
        "validation": (
            f"{val_fraction:.0%} of the train split (val split unused)"
            if splits and validate_on == "train"
            else "val split"
            if splits
            else f"{val_fraction:.0%} of the images"
        ),
    }
    model = det.model
    model.transform._skip_resize = True
    vdet, ema_model = det, None  # vdet: the weights validated and saved
    if ema:  # exponential moving average of the weights (and BatchNorm statistics)
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema_model = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(ema)), use_buffers=True)
        raw = resumed["extra"].get("raw_state_dict") if resumed is not None else None
        if raw is not None:  # a resumed last.pt holds the averages; its raw weights go on training
            ema_model.n_averaged.fill_(1)
            model.load_state_dict(raw)
        vdet = RegionDetector(model=ema_model.module, config=det.config, recipe=det.recipe, device=det_dev)
    train_model = ddp_glue.wrap(model)  # DDP under torchrun: batch_size crops per rank and step
    if ddp_glue.world_size() > 1:  # each rank its own crops
        rng = np.random.default_rng([seed, start_epoch, ddp_glue.rank()])
    step = start_epoch * iters_per_epoch
    for epoch in range(start_epoch, epochs):
        model.train()
        tot = 0.0
        for it in range(iters_per_epoch):
            imgs, tgts = [], []
            for _ in range(batch_size):
                k = int(rng.integers(len(prepared))) if weights is None else int(rng.choice(len(prepared), p=weights))
                img, boxes, labels = prepared[k]
                c, t = _random_crop(
                    img,
                    boxes,
                    labels,
                    crop_size,
                    rng,
                    min_visible=min_visible,
                    rot90=rot90,
                    scale_jitter=jitter,
                    color_aug=color_aug,
                )
                imgs.append(c.to(det_dev))
                tgts.append({k: v.to(det_dev) for k, v in t.items()})
            losses = train_model(imgs, tgts)
            loss = sum(losses.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if ema_model is not None:
                ema_model.update_parameters(model)
            step += 1
            ddp_glue.note_step(len(imgs))
            tot += float(loss.detach())
            emit(
                {"event": "step", "epoch": epoch + 1, "step": step, "steps": total_steps, "loss": float(loss.detach())}
            )
            if progress is not None:
                progress("train", step, total_steps)
        # per-epoch validation on the raw detections (test-time views would cost their number in time)
        preds = ddp_glue.map_sharded(lambda v: predict_items(vdet, [v], tta="none")[0], va_items)  # split over ranks
        m = ap50(preds, [(v["boxes"], v["labels"]) for v in va_items], class_names)
        metric = m["ap50"] if m["ap50"] is not None else 0.0
        if by_source:
            m["per_source"] = score_real(preds, va_items)
            metric = m["ap50"] = float(np.mean([v["aim"] for v in m["per_source"].values()]))
        rec = {
            "event": "epoch",
            "epoch": epoch + 1,
            "epochs": epochs,
            "loss": ddp_glue.reduce_mean(tot, iters_per_epoch),
            "val_loss": None,
            "metric": metric,
            "metric_name": "val_ap50",
            "ap50_per_class": m["ap50_per_class"],
            **({"per_source": m["per_source"]} if by_source else {}),
        }
        history.append(rec)
        emit(rec)
        vdet.metrics = {**m, "epoch": epoch + 1}
        base_extra = {"epoch": epoch, "history": history}
        if metric > best["metric"]:
            best = {"metric": float(metric), "epoch": epoch + 1}
            if ddp_glue.is_main():
                save_checkpoint(vdet.to_checkpoint(extra={**base_extra, "best": best}), out / "best.pt")
        if ddp_glue.is_main():
            raw_extra = (
                {}
                if ema_model is None
                else {"raw_state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
            )
            save_checkpoint(
                vdet.to_checkpoint(
                    extra={
                        **base_extra,
                        "best": best,
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        **raw_extra,
                    }
                ),
                out / "last.pt",
            )
        model.transform._skip_resize = True
    if not (out / "best.pt").is_file() and ddp_glue.is_main():
        save_checkpoint(vdet.to_checkpoint(extra={"history": history}), out / "best.pt")
    ddp_glue.barrier()  # rank 0 has written best.pt
    best_ck = load_checkpoint(out / "best.pt", kind="detector")
    metrics = {"val": best_ck["metrics"], "best_epoch": best["epoch"]}
    mode = det.config.get("tta") or "none"
    if mode != "none" and ddp_glue.is_main():  # the best epoch's validation AP50 as evaluate computes it
        best_det = RegionDetector.from_checkpoint(best_ck, device=det_dev)
        m = ap50(predict_items(best_det, va_items), [(v["boxes"], v["labels"]) for v in va_items], class_names)
        metrics["val_tta"] = {**m, "tta": mode}
        emit({"event": "validate_tta", "tta": mode, "metric": m["ap50"], "metric_name": "val_ap50"})
    return {"checkpoint": str(out / "best.pt"), "metrics": metrics, "history": history, "seconds": time.time() - t0}


def score_real(preds, items, score_threshold: float = 0.5) -> dict:
    """Per-source scores of detections on ``data.real_smears`` items: AP50 (all detections,
    Pascal VOC), recall and precision at IoU 0.5 of the boxes scoring >= ``score_threshold``,
    and for items with point labels (Chula) the share of points inside such a box.
    ``aim``: the figure the source is judged by (points inside for point-labelled sources, else
    AP50)."""
    from ..data.real_smears import points_inside

    out = {}
    for src in dict.fromkeys(it["source"] for it in items):
        idx = [i for i, it in enumerate(items) if it["source"] == src]
        p = [preds[i] for i in idx]
        gts = [items[i]["boxes"] for i in idx]
        ap, n_gt = average_precision([(b, sc) for b, sc, _ in p], gts, 0.5)
        tp = fn = n_det = 0
        pin, n_pts = 0, 0
        for (b, sc, _), it in zip(p, (items[i] for i in idx)):
            kb = np.asarray(b).reshape(-1, 4)[np.asarray(sc) >= score_threshold]
            n_det += len(kb)
            g = np.asarray(it["boxes"], dtype=np.float64).reshape(-1, 4)
            if len(g) and len(kb):
                iou = np.stack([_iou_one(np.asarray(x, np.float64), g) for x in kb])
                found = iou.max(axis=0) >= 0.5
                tp += int(found.sum())
                fn += int((~found).sum())
            else:
                fn += len(g)
            if it.get("points") is not None:
                pin += int(points_inside(kb, it["points"]).sum())
                n_pts += len(it["points"])
        rec = {"n_images": len(idx), "n_boxes": n_gt, "ap50": ap, "recall": tp / max(tp + fn, 1), "n_detections": n_det}
        if n_pts:
            rec["points_inside"] = pin / n_pts
            rec["n_points"] = n_pts
        rec["aim"] = rec.get("points_inside", ap if ap is not None else 0.0)
        out[src] = rec
    return out


def evaluate_detector(
    model,
    data,
    device="auto",
    *,
    seed: int = 12345,
    n_smears: int = 3,
    split: str | None = "val",
    score_threshold: float = 0.05,
    batch_size: int = 2,
    smear_shape=(1080, 1920),
    region_merge=None,
    tta=None,
    **options,
) -> dict:
    """AP50 (Pascal VOC all-point, IoU 0.5) of a detector checkpoint on ``data``.

    ``data`` as for :func:`train_detector`; "simulated" uses held-out seeds. For a VOC folder
    with split files only the ``split`` images are used (default "val"; None = all). Ground-truth
    classes are matched to the detector's class names; a single-class "cell region" detector is
    scored against every ground-truth box."""
    from .._device import detection_device, resolve_device
    from ..models.detector import RegionDetector, tta_mode

    dev = resolve_device(device)
    det_dev = detection_device(dev)
    det = RegionDetector.from_checkpoint(model, device=det_dev)
    tta = None if tta is None else tta_mode(tta)  # a bad value fails before the data are read
    names = det.class_names
    single = names == [REGION_CLASS]
    items, data_names, splits = load_detection_data(
        data, seed=seed, n_smears=n_smears, classes=None if single else names, smear_shape=smear_shape
    )
    if splits and split:
        items = [it for it, s in zip(items, splits) if s == split] or items
    if single:
        targets = [(it["boxes"], np.ones(len(it["boxes"]), np.int64)) for it in items]
    else:
        targets = [
            (it["boxes"], np.array([names.index(data_names[l - 1]) + 1 for l in it["labels"]], np.int64))
            for it in items
        ]
    preds = predict_items(
        det, items, batch_size=batch_size, score_threshold=score_threshold, region_merge=region_merge, tta=tta
    )
    return ap50(preds, targets, names)
