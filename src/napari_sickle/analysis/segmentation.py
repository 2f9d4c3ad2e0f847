"""Watershed vs U-Net vs connected components: cell instance segmentation and its comparison.

All functions take an image as a numpy array — grayscale (H, W) or colour (H, W, 3/4), any
dtype (8/16-bit, float) — and return int32 instance label images (0 = background).
Cells are assumed darker than the background (bright-field smears); pass
``polarity="bright"`` for the opposite.

- :func:`segment_connected_components`: threshold -> fill holes -> 4-connected components
  (the baseline; touching cells stay merged).
- :func:`segment_watershed`: threshold -> distance transform -> ``peak_local_max`` markers
  -> ``watershed`` (scikit-image).
- :func:`segment_unet`: tiled U-Net inference (overlapping tiles, linear blending) predicting
  background / interior / boundary; instances grow from interior seeds by watershed.
- :func:`compare_segmentations` runs several and scores them against a ground truth.
- :func:`evaluate_segmentation` scores them on an image/mask folder or on simulated smears
  (what ``python -m napari_sickle.evaluate segmentation`` prints).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .._progress import report
from ..instances import relabel, remove_small, typical_sizes
from ..io.images import to_rgb_uint8
from ..models.unet_processing import (  # noqa: F401 (post-processing and border rule, public here too)
    BORDER_FEATURES,
    UNET_TTA_MODES,
    border_features,
    drop_border_objects_by_classifier,
    drop_small_border_objects,
    normalize_image,
    resize_chw,
    unet_probabilities_to_instances,
    unet_tta_mode,
)
from .seg_metrics import as_instances, segmentation_metrics

METHODS: tuple[str, ...] = ("watershed", "unet", "connected_components")
THRESHOLD_METHODS: tuple[str, ...] = ("otsu", "li", "yen", "triangle", "mean", "isodata")


# ----------------------------------------------------------------------------- input
def to_gray(image: np.ndarray) -> np.ndarray:
    """float32 gray in [0, 1]."""
    rgb = to_rgb_uint8(image).astype(np.float32) / 255.0
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def _threshold(gray: np.ndarray, method: str) -> float:
    from skimage import filters

    funcs = {
        "otsu": filters.threshold_otsu,
        "li": filters.threshold_li,
        "yen": filters.threshold_yen,
        "triangle": filters.threshold_triangle,
        "mean": filters.threshold_mean,
        "isodata": filters.threshold_isodata,
    }
    if method not in funcs:
        raise ValueError(f"unknown threshold method {method!r}; choose one of {THRESHOLD_METHODS}")
    return float(funcs[method](gray))


def fill_mask_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` (4-connected background) by labelling the background
    once: background components that do not reach the image border are holes. Same result,
    several times faster on large images."""
    from scipy import ndimage as ndi

    mask = np.asarray(mask, bool)
    if mask.size == 0:
        return mask
    lab, n = ndi.label(~mask)
    outside = np.zeros(n + 1, bool)
    outside[np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])] = True
    outside[0] = True  # label 0 is the mask itself
    return mask | ~outside[lab]


def foreground_mask(
    image: np.ndarray,
    threshold_method: str = "otsu",
    polarity: str = "dark",
    min_contrast: float = 0.08,
    fill_holes: bool = True,
) -> np.ndarray:
    """Boolean cell mask by a global threshold. An image without contrast has no cells."""
    if polarity not in ("dark", "bright"):
        raise ValueError("polarity must be 'dark' or 'bright'")
    gray = to_gray(image)
    step = max(1, int(np.sqrt(gray.size / 250_000)))  # statistics from a ~250k px subsample
    sub = gray[::step, ::step]
    lo, hi = np.percentile(sub, [0.5, 99.5])
    if hi - lo < min_contrast:  # flat or noise-only image: nothing to segment
        return np.zeros(gray.shape, bool)
    thr = _threshold(sub, threshold_method)
    fg = gray < thr if polarity == "dark" else gray > thr
    if fill_holes:
        fg = fill_mask_holes(fg)
    return fg


# ----------------------------------------------------------------------------- methods
def segment_connected_components(
    image: np.ndarray,
    threshold_method: str = "otsu",
    min_size: Optional[int] = None,
    polarity: str = "dark",
    progress=None,
) -> np.ndarray:
    """Baseline: one label per 4-connected foreground region (touching cells stay merged)."""
    from skimage.measure import label

    report(progress, "connected components", 0, 2)
    fg = foreground_mask(image, threshold_method, polarity)
    if min_size is None:
        min_size = typical_sizes(fg)[1]
    report(progress, "connected components", 1, 2)
    lab = label(fg, connectivity=1).astype(np.int32)
    if lab.max():
        lab = remove_small(lab, int(min_size))
    report(progress, "connected components", 2, 2)
    return relabel(lab)


def segment_watershed(
    image: np.ndarray,
    threshold_method: str = "otsu",
    min_distance: Optional[int] = None,
    min_size: Optional[int] = None,
    polarity: str = "dark",
    smooth_sigma: float = 2.0,
    work_factor="auto",
    progress=None,
) -> np.ndarray:
    """Classic marker watershed from scikit-image.

    threshold (``threshold_method``) -> Euclidean distance transform (Gaussian-smoothed by
    ``smooth_sigma``) -> ``peak_local_max`` markers at least ``min_distance`` px apart ->
    ``watershed(-distance, markers, mask=foreground)`` -> objects below ``min_size`` px dropped.
    ``min_distance=None`` uses 0.6 × the typical cell radius and ``min_size=None`` 15 % of
    the typical cell area, both estimated from the image's foreground components.

    Speed: the distance transform, markers and watershed run on the image block-averaged by
    ``work_factor`` (``"auto"``: 2 when the typical cell radius is at least 12 px, else 1;
    distances and sizes are scaled accordingly); the labels are brought back to full size
    and cut to the full-resolution foreground, so object outlines keep full-resolution
    accuracy: faster on large cells at the same Dice and F1@0.5 (docs/segmentation.md).
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed
    from skimage.transform import downscale_local_mean

    if polarity not in ("dark", "bright"):
        raise ValueError("polarity must be 'dark' or 'bright'")
    report(progress, "watershed", 0, 4)
    gray = to_gray(image)
    step = max(1, int(np.sqrt(gray.size / 250_000)))  # statistics from a ~250k px subsample
    sub = gray[::step, ::step]
    lo, hi = np.percentile(sub, [0.5, 99.5])
    if hi - lo < 0.08:  # flat or noise-only image: nothing to segment (as foreground_mask)
        report(progress, "watershed", 4, 4)
        return np.zeros(gray.shape, np.int32)
    thr = _threshold(sub, threshold_method)

    def fg_of(g):
        return fill_mask_holes(g < thr if polarity == "dark" else g > thr)

    if work_factor == "auto":
        r_sub, _ = typical_sizes(fg_of(sub))
        work_factor = 2 if r_sub * step >= 12 else 1
    k = max(1, int(work_factor))
    fg = fg_of(downscale_local_mean(gray, (k, k)) if k > 1 else gray)
    radius, _ = typical_sizes(fg)
    radius *= k  # in full-resolution pixels
    if min_size is None:
        min_size = int(max(30, 0.15 * np.pi * radius**2))
    if min_distance is None:
        min_distance = max(3, int(round(0.6 * radius)))
    fg = remove_small(fg, max(1, int(min_size) // k**2))
    report(progress, "watershed", 1, 4)
    dist = ndi.distance_transform_edt(fg).astype(np.float32)
    if smooth_sigma and smooth_sigma > 0:
        dist = ndi.gaussian_filter(dist, smooth_sigma / k)
    report(progress, "watershed", 2, 4)
    coords = peak_local_max(
        dist, min_distance=max(1, int(round(min_distance / k))), threshold_abs=1.0 / k, exclude_border=False
    )
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(coords.T)] = np.arange(1, len(coords) + 1, dtype=np.int32)
    report(progress, "watershed", 3, 4)
    lab = _label_unmarked(watershed(-dist, markers, mask=fg).astype(np.int32), fg)
    if k > 1:
        lab = _to_full_size(lab, k, fg_of(gray))
    lab = remove_small(lab, int(min_size))
    report(progress, "watershed", 4, 4)
    return relabel(lab)


def _label_unmarked(lab: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Foreground components that received no watershed marker become their own objects."""
    from skimage.measure import label

    missing = fg & (lab == 0)
    if missing.any():
        extra = label(missing, connectivity=1)
        lab = np.where(extra > 0, extra + lab.max(), lab).astype(np.int32)
    return lab


def _to_full_size(lab: np.ndarray, k: int, fg_full: np.ndarray) -> np.ndarray:
    """Labels found on the image block-averaged by ``k`` back at full size: grown by one working
    pixel, repeated k times, padded to the full-resolution foreground ``fg_full`` and cut to it."""
    from scipy import ndimage as ndi

    H, W = fg_full.shape
    lab = np.where(lab == 0, ndi.maximum_filter(lab, size=3), lab)
    lab = np.repeat(np.repeat(lab, k, axis=0), k, axis=1)
    lab = np.pad(lab, ((0, max(0, H - lab.shape[0])), (0, max(0, W - lab.shape[1]))), mode="edge")[:H, :W]
    return np.where(fg_full, lab, 0).astype(np.int32)


# ----------------------------------------------------------------------------- U-Net
def _resolve_unet(model, device):
    """model: path / checkpoint dict / (module, config) / module -> (module, config)."""
    from ..models.unet import DEFAULT_CONFIG, load_unet

    if isinstance(model, (str, Path, dict)):
        return load_unet(model, device=device)
    if isinstance(model, tuple):
        net, cfg = model
        return net.to(device).eval(), {**DEFAULT_CONFIG, **cfg}
    cfg = {**DEFAULT_CONFIG, "depth": getattr(model, "depth", DEFAULT_CONFIG["depth"])}
    return model.to(device).eval(), cfg


def _tile_starts(n: int, tile: int, step: int) -> list[int]:
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, step))
    starts.append(n - tile)
    return sorted(set(starts))


def _tta_softmax(net, x, mode: str):
    """Softmax of ``net`` on the (N, C, h, w) batch ``x``, averaged over the TTA views."""
    import torch

    if mode == "none":
        return torch.softmax(net(x).float(), dim=1)
    views = (
        [(f, 0) for f in ((), (3,), (2,), (2, 3))]
        if mode == "flips"
        else [(f, k) for f in ((), (3,)) for k in range(4)]
    )
    acc = None
    for f, k in views:
        v = x.flip(f) if f else x
        v = torch.rot90(v, k, (2, 3)) if k else v
        p = torch.softmax(net(v).float(), dim=1)
        p = torch.rot90(p, -k, (2, 3)) if k else p
        p = p.flip(f) if f else p
        acc = p if acc is None else acc + p
    return acc / len(views)


def predict_unet_probabilities(
    image: np.ndarray,
    model,
    tile: int = 512,
    overlap: int = 64,
    device="auto",
    progress=None,
    output_size: Optional[tuple] = None,
    tta=None,
) -> np.ndarray:
    """Class probabilities (3, H, W) float32 by tiled inference with linear blending.

    The image is resized by the checkpoint's ``scale`` first; tiles of ``tile`` px (at that
    scale) overlap by ``overlap`` px and are blended with weights that ramp linearly over the
    overlap, so seams vanish and only one tile is in the network at a time.

    ``tta`` (None: the checkpoint config's ``tta``, else ``"none"``): ``"flips"`` averages the
    softmax of each tile over 4 views (identity, left-right, up-down, both), ``"d4"`` over
    the 8 flips/90° rotations; it costs 4 or 8 network passes per tile.
    """
    import torch

    from .._device import resolve_device

    dev = resolve_device(device) if isinstance(device, str) else device
    net, cfg = _resolve_unet(model, dev)
    mode = unet_tta_mode(cfg.get("tta") if tta is None else tta)
    rgb = to_rgb_uint8(image)
    H, W = rgb.shape[:2]
    scale = float(cfg.get("scale", 1.0))
    x = torch.from_numpy(normalize_image(rgb))
    h, w = max(1, round(H * scale)), max(1, round(W * scale))
    if (h, w) != (H, W):
        x = resize_chw(x, (h, w))
    mult = 2 ** int(cfg.get("depth", 3))
    tile = max(mult, int(tile) // mult * mult)
    overlap = int(min(max(0, overlap), tile // 2))
    # pad so that every tile is full-sized and a multiple of 2**depth
    ph = max(tile, -(-h // mult) * mult) if h > tile else -(-h // mult) * mult
    pw = max(tile, -(-w // mult) * mult) if w > tile else -(-w // mult) * mult
    th, tw = min(tile, ph), min(tile, pw)
    xp = np.pad(x.numpy(), ((0, 0), (0, ph - h), (0, pw - w)), mode="reflect" if min(h, w) > 1 else "edge")
    n_cls = int(cfg.get("n_classes", 3))
    acc = np.zeros((n_cls, ph, pw), np.float32)
    wsum = np.zeros((ph, pw), np.float32)

    def ramp(n):
        r = np.ones(n, np.float32)
        if overlap > 0 and n > 2 * overlap:
            e = np.linspace(1.0 / (overlap + 1), 1.0, overlap, dtype=np.float32)
            r[:overlap] = e
            r[-overlap:] = e[::-1]
        return r

    wt = np.outer(ramp(th), ramp(tw))
    ys = _tile_starts(ph, th, th - overlap)
    xs = _tile_starts(pw, tw, tw - overlap)
    total = len(ys) * len(xs)
    done = 0
    report(progress, "U-Net tiles", 0, total)
    with torch.inference_mode():
        for y0 in ys:
            for x0 in xs:
                t = torch.from_numpy(np.ascontiguousarray(xp[:, y0 : y0 + th, x0 : x0 + tw]))[None].to(dev)
                p = _tta_softmax(net, t, mode)[0].cpu().numpy()
                acc[:, y0 : y0 + th, x0 : x0 + tw] += p * wt
                wsum[y0 : y0 + th, x0 : x0 + tw] += wt
                done += 1
                report(progress, "U-Net tiles", done, total)
    probs = acc[:, :h, :w] / np.maximum(wsum[:h, :w], 1e-6)
    out = output_size or (H, W)
    if tuple(out) != (h, w):
        probs = resize_chw(torch.from_numpy(np.ascontiguousarray(probs)), tuple(out)).numpy()
    return probs


def segment_unet(
    image: np.ndarray,
    model,
    tile: int = 512,
    overlap: int = 64,
    device="auto",
    min_size: Optional[int] = None,
    border_min_fraction: Optional[float] = None,
    tta=None,
    progress=None,
) -> np.ndarray:
    """Instance labels from a trained U-Net (path, checkpoint dict or module) by tiled inference.

    ``tile``/``overlap`` are in pixels of the network's working scale (the checkpoint's
    ``scale``; 0.25 for the BBBC041 recipe). ``min_size`` defaults to 30 px scaled by 1/scale².
    Objects cut by the image border are dropped by the checkpoint's rule, fitted on its
    training masks: its ``border_classifier`` (logistic model over size, depth into the image
    and length on the edge) or else its ``border_min_fraction`` size rule. Passing
    ``border_min_fraction`` uses the size rule with that fraction instead; 0 keeps every
    border object (e.g. on crops of annotated frames).
    ``tta`` (None: the checkpoint's, normally ``"none"``): see :func:`predict_unet_probabilities`.
    """
    from .._device import resolve_device

    dev = resolve_device(device) if isinstance(device, str) else device
    net, cfg = _resolve_unet(model, dev)
    probs = predict_unet_probabilities(
        image, (net, cfg), tile=tile, overlap=overlap, device=dev, progress=progress, tta=tta
    )
    if min_size is None:
        min_size = int(round(30 / max(float(cfg.get("scale", 1.0)), 1e-3) ** 2))
    classifier = None
    if border_min_fraction is None:
        border_min_fraction = float(cfg.get("border_min_fraction", 0.0) or 0.0)
        classifier = cfg.get("border_classifier") or None
    return unet_probabilities_to_instances(
        probs, min_size=min_size, border_min_fraction=float(border_min_fraction), border_classifier=classifier
    )


# ----------------------------------------------------------------------------- comparison
@dataclass
class ComparisonResult:
    """Per-method instance labels, timings and (with a ground truth) metrics."""

    labels: dict = field(default_factory=dict)  # method -> int32 (H, W)
    seconds: dict = field(default_factory=dict)  # method -> float
    metrics: dict = field(default_factory=dict)  # method -> SegmentationMetrics (empty without GT)
    merged: dict = field(default_factory=dict)  # method -> int32 labels of merged predictions
    ground_truth: Optional[np.ndarray] = None  # instance labels of the GT, if given

    def metrics_table(self):
        """pandas DataFrame, one row per method."""
        import pandas as pd

        rows = []
        for m, lab in self.labels.items():
            row = {"method": m, "count": int(lab.max()), "seconds": round(self.seconds.get(m, float("nan")), 3)}
            if m in self.metrics:
                d = self.metrics[m].as_dict()
                row.update(
                    dice=d["dice"],
                    iou=d["iou"],
                    f1_50=d["instance_f1_50"],
                    count_true=d["count_true"],
                    count_error=d["count_error"],
                    merges=d["merges"],
                    splits=d["splits"],
                )
            rows.append(row)
        return pd.DataFrame(rows)


def check_ground_truth(image_shape, ground_truth) -> np.ndarray:
    gt = np.asarray(ground_truth)
    if gt.ndim == 3 and gt.shape[-1] in (3, 4):  # mask stored as RGB
        gt = gt[..., 0]
    if gt.ndim != 2:
        raise ValueError(f"ground truth must be a 2-D mask or label image, got shape {gt.shape}")
    if gt.shape != tuple(image_shape[:2]):
        raise ValueError(
            f"ground truth is {gt.shape[1]}x{gt.shape[0]} (WxH) but the image is "
            f"{image_shape[1]}x{image_shape[0]}; they must have the same size"
        )
    return as_instances(gt)


def compare_segmentations(
    image: np.ndarray,
    ground_truth: Optional[np.ndarray] = None,
    methods: Sequence[str] = ("watershed", "connected_components"),
    unet_model=None,
    watershed_params: Optional[dict] = None,
    cc_params: Optional[dict] = None,
    unet_params: Optional[dict] = None,
    device="auto",
    progress=None,
) -> ComparisonResult:
    """Run ``methods`` on ``image`` and, with ``ground_truth`` (mask or labels), score them."""
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"expected a 2-D or (H, W, C) image, got shape {image.shape}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {METHODS}")
    if not methods:
        raise ValueError("choose at least one segmentation method")
    if "unet" in methods and unet_model is None:
        raise ValueError("the U-Net method needs a trained model (a unet checkpoint, best.pt)")
    gt = check_ground_truth(image.shape, ground_truth) if ground_truth is not None else None
    res = ComparisonResult(ground_truth=gt)
    n = len(methods)

    for i, m in enumerate(methods):

        def sub(stage, done, total, _i=i):
            report(progress, stage, _i * 100 + int(100 * done / max(total, 1)), n * 100)

        t0 = time.perf_counter()
        if m == "watershed":
            lab = segment_watershed(image, progress=sub, **(watershed_params or {}))
        elif m == "connected_components":
            lab = segment_connected_components(image, progress=sub, **(cc_params or {}))
        else:
            lab = segment_unet(image, unet_model, device=device, progress=sub, **(unet_params or {}))
        res.seconds[m] = time.perf_counter() - t0
        res.labels[m] = lab
        if gt is not None:
            met = segmentation_metrics(lab, gt)
            res.metrics[m] = met
            res.merged[m] = np.where(np.isin(lab, met.merged_ids), lab, 0).astype(np.int32)
        report(progress, "compare", (i + 1) * 100, n * 100)
    return res


# ----------------------------------------------------------------------------- evaluation
def _read_pair(image_path, mask_path, gt_min_size):
    """(image, ground-truth instances) of one image/mask pair."""
    from ..io.images import read_image
    from ..io.masks import read_mask

    return read_image(image_path), as_instances(read_mask(mask_path), min_size=gt_min_size)


def scan_pairs(root) -> list[tuple[Path, Path]]:
    """Image/mask pairs of a folder (:func:`napari_sickle.io.datasets.scan_image_mask_pairs`)."""
    from ..io.datasets import scan_image_mask_pairs

    df = scan_image_mask_pairs(root)
    return [(Path(a), Path(b)) for a, b in zip(df["image"], df["mask"])]


def evaluate_segmentation(
    data,
    unet_model=None,
    device="auto",
    methods: Optional[Sequence[str]] = None,
    watershed_params: Optional[dict] = None,
    unet_params: Optional[dict] = None,
    gt_min_size: int = 30,
    limit: Optional[int] = None,
    images: Optional[Sequence[str]] = None,
    n_simulated: int = 2,
    progress=None,
) -> dict:
    """Mean metrics per method over a folder of image/mask pairs or ``"simulated"`` smears.

    Returns ``{method: {"dice", "iou", "instance_f1_50", "count_error", "merges", "splits",
    "precision_50", "recall_50"}, ..., "n_images": n}``; ``methods`` defaults to watershed and
    connected components, plus the U-Net when ``unet_model`` is given. Ground-truth masks are
    split into cells by 4-connected components; specks under ``gt_min_size`` px are dropped.
    ``images`` restricts a folder to those file stems (e.g. a checkpoint's ``test_images``).
    """
    if methods is None:
        methods = ["watershed", "connected_components"] + (["unet"] if unet_model is not None else [])
    items = []
    if isinstance(data, str) and data == "simulated":
        from ..data.simulate import simulate_smear

        for s in range(n_simulated):
            sm = simulate_smear(seed=1000 + s)
            items.append(("simulated", sm.image, as_instances(sm.instances)))
    else:
        pairs = scan_pairs(data)
        if images is not None:
            wanted = {Path(str(n)).stem for n in images}
            pairs = [(ip, mp) for ip, mp in pairs if Path(ip).stem in wanted]
            if not pairs:
                raise ValueError(f"none of the requested images {sorted(wanted)} is in {data}")
        for ip, mp in pairs[: limit or None]:
            items.append((ip, mp, None))
    if unet_model is not None and "unet" in methods:
        from .._device import resolve_device

        dev = resolve_device(device) if isinstance(device, str) else device
        unet_model = _resolve_unet(unet_model, dev)
    per = {m: [] for m in methods}
    images = []
    for k, item in enumerate(items):
        if item[0] == "simulated":
            _, img, gt = item
            name = f"simulated-{k}"
        else:
            img, gt = _read_pair(item[0], item[1], gt_min_size)
            name = Path(item[0]).name
        res = compare_segmentations(
            img,
            gt,
            methods=methods,
            unet_model=unet_model,
            watershed_params=watershed_params,
            unet_params=unet_params,
            device=device,
        )
        for m in methods:
            per[m].append(res.metrics[m].as_dict())
        images.append(name)
        report(progress, "evaluate", k + 1, len(items))
    out: dict = {}
    keys = ("dice", "iou", "instance_f1_50", "count_error", "merges", "splits", "precision_50", "recall_50")
    for m in methods:
        out[m] = {key: float(np.mean([d[key] for d in per[m]])) for key in keys}
    out["n_images"] = len(items)
    out["images"] = images
    return out
