"""Data of the region detector trainer: loading images with boxes from every supported source
(``training.detector`` lists them), the train/validation split, and the training crops with
their augmentations."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

REGION_CLASS = "cell region"


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
        return _simulated_items(seed, n_smears, smear_shape, progress), [REGION_CLASS], None
    root = Path(data)
    if not root.exists():
        raise DatasetError(f"{data}: does not exist")
    if (root / "JPEGImages").is_dir() or (root / "Annotations").is_dir():
        return _voc_items(root, classes, progress)
    items = _mask_pair_items(root, progress)
    if not items:
        raise DatasetError(f"{data}: no readable image/mask pairs")
    return items, [REGION_CLASS], None


def _simulated_items(seed, n_smears, smear_shape, progress):
    """Simulated smears, one box per connected region of the cell mask."""
    from ..data.simulate import simulate_smear

    items = []
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
    return items


def _voc_items(root: Path, classes, progress):
    """A Pascal VOC folder: (items, class names, split per item or None)."""
    from ..io.datasets import scan_voc
    from ..io.formats import read_voc
    from ..io.images import read_image, to_rgb_uint8

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
    items = []
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


def _mask_pair_items(root: Path, progress):
    """``images/`` + ``masks/`` pairs: one box per connected region of each mask."""
    from ..io.datasets import scan_image_mask_pairs
    from ..io.images import read_image, to_rgb_uint8
    from ..io.masks import mask_to_regions, read_mask

    items = []
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
    return items


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
