"""U-Net pre- and post-processing shared by training and inference, and the border rule.

- input: :func:`normalize_image` (per-channel standardisation), :func:`resize_chw`;
- training targets: :func:`unet_targets` (background / interior / inner boundary);
- output: :func:`unet_probabilities_to_instances` (seeds on the interior class, grown by
  watershed) and the rule that drops border-cut cells the annotators leave out
  (:func:`border_features`, :func:`drop_border_objects_by_classifier`,
  :func:`drop_small_border_objects`; docs/segmentation.md).

The network is :mod:`napari_sickle.models.unet`. numpy/scipy/scikit-image only; torch is
imported inside :func:`resize_chw`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..instances import relabel, remove_small, typical_sizes


# ----------------------------------------------------------------------------- pre-processing
def normalize_image(rgb: np.ndarray) -> np.ndarray:
    """(3, H, W) float32 of an (H, W, 3) uint8 image: per-channel standardisation over the whole image."""
    a = rgb.astype(np.float32) / 255.0
    mean = a.reshape(-1, a.shape[-1]).mean(axis=0)
    std = a.reshape(-1, a.shape[-1]).std(axis=0)
    a = (a - mean) / np.maximum(std, 0.02)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def resize_chw(t, size):
    """Bilinear, antialiased resize of a (C, H, W) tensor to ``size`` (h, w)."""
    import torch.nn.functional as F

    return F.interpolate(t[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def unet_targets(instances: np.ndarray, size) -> np.ndarray:
    """(h, w) uint8 classes at the working size: 0 background, 1 interior, 2 inner boundary."""
    from skimage.segmentation import find_boundaries
    from skimage.transform import resize

    inst = instances
    if inst.shape != tuple(size):
        inst = resize(instances, size, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    t = (inst > 0).astype(np.uint8)
    t[find_boundaries(inst, mode="inner") & (inst > 0)] = 2
    return t


# ----------------------------------------------------------------------------- test-time views
UNET_TTA_MODES = ("none", "flips", "d4")


def unet_tta_mode(value) -> str:
    """``tta`` setting -> ``"none"``, ``"flips"`` or ``"d4"`` (None/False -> none, True -> d4)."""
    if value in (None, False, "", "none"):
        return "none"
    if value is True:
        return "d4"
    if value not in UNET_TTA_MODES:
        raise ValueError(f"U-Net tta must be one of {', '.join(UNET_TTA_MODES)}, not {value!r}")
    return str(value)


# ----------------------------------------------------------------------------- post-processing
def unet_probabilities_to_instances(
    probs: np.ndarray,
    min_size: int = 30,
    seeds: str = "distance",
    seed_threshold: float = 0.5,
    min_distance_factor: float = 0.7,
    min_seed_size: int = 8,
    border_min_fraction: float = 0.0,
    border_classifier: Optional[dict] = None,
) -> np.ndarray:
    """Instances from (background, interior, boundary) probabilities.

    Foreground = P(background) < 0.5; interior = P(interior) > ``seed_threshold`` inside it
    (the boundary class cuts the interiors of touching cells apart).

    ``seeds="distance"`` (default): markers are ``peak_local_max`` of the (Gaussian-smoothed)
    distance transform of the interior mask, at least ``min_distance_factor`` × the typical
    interior radius apart, so interiors still joined by a thin bridge get one seed per cell;
    ``seeds="components"``: one marker per connected interior region. Markers grow over the
    foreground by watershed.

    Border rule: ``border_classifier`` (a logistic model over :func:`border_features`, fitted
    by the trainer on its training masks) drops the border-cut objects it predicts the
    annotators left out; without it, ``border_min_fraction`` > 0 drops border objects smaller
    than that fraction of the median inner object (BBBC041's annotators omit mostly the
    small cut-off cells; docs/segmentation.md).
    """
    from scipy import ndimage as ndi
    from skimage.measure import label
    from skimage.segmentation import watershed

    fg = probs[0] < 0.5
    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    interior = (probs[1] > seed_threshold) & fg
    if seeds == "distance":
        from skimage.feature import peak_local_max

        radius, _ = typical_sizes(interior)
        dist = ndi.gaussian_filter(ndi.distance_transform_edt(interior).astype(np.float32), 2.0)
        coords = peak_local_max(
            dist, min_distance=max(2, int(min_distance_factor * radius)), threshold_abs=1.0, exclude_border=False
        )
        markers = np.zeros(fg.shape, np.int32)
        markers[tuple(coords.T)] = np.arange(1, len(coords) + 1, dtype=np.int32)
        elevation = -dist
    elif seeds == "components":
        markers = label(interior, connectivity=1)
        if markers.max():
            markers = remove_small(markers, int(min_seed_size))
        elevation = 1.0 - probs[1]
    else:
        raise ValueError("seeds must be 'distance' or 'components'")
    lab = watershed(elevation, markers, mask=fg).astype(np.int32)
    missing = fg & (lab == 0)
    if missing.any():
        extra = label(missing, connectivity=1)
        lab = np.where(extra > 0, extra + lab.max(), lab).astype(np.int32)
    if lab.max():
        lab = remove_small(lab, int(min_size))
    if border_classifier and lab.max():
        lab = drop_border_objects_by_classifier(lab, border_classifier)
    elif border_min_fraction > 0 and lab.max():
        lab = drop_small_border_objects(lab, border_min_fraction)
    return relabel(lab)


# ----------------------------------------------------------------------------- border rule
BORDER_FEATURES = (
    "area / typical area",
    "depth into the image / typical diameter (max 3)",
    "length on the image edge / typical diameter",
)


def border_features(labels: np.ndarray):
    """Objects touching the image border and their features: (ids, (n, 3) float array).

    Features (``BORDER_FEATURES``): area relative to the median area of the objects that do
    not touch the border ("typical"); how far the object reaches into the image (its bounding
    box extent perpendicular to the edge(s) it touches) and how many pixels it has on the
    image edge, both relative to the typical diameter. A cell barely cut by the edge reaches
    deep into the image and touches the edge along a short chord. No border objects, or no
    inner objects to take the typical size from: empty arrays.
    """
    from scipy import ndimage as ndi

    lab = np.asarray(labels)
    H, W = lab.shape
    n = int(lab.max()) + 1
    area = np.bincount(lab.ravel().astype(np.int64), minlength=n)
    sides = [lab[0], lab[-1], lab[:, 0], lab[:, -1]]
    edge = np.zeros(n, bool)
    edge[np.concatenate(sides)] = True
    edge[0] = False
    inner = area[1:][(~edge[1:]) & (area[1:] > 0)]
    ids = np.flatnonzero(edge)
    if ids.size == 0 or inner.size == 0:
        return ids, np.zeros((0, 3))
    typical = float(np.median(inner))
    diam = 2.0 * np.sqrt(typical / np.pi)
    contact = sum(np.bincount(s.astype(np.int64), minlength=n) for s in sides)
    feats = []
    slices = ndi.find_objects(lab.astype(np.int64))
    for k in ids:
        ys, xs = slices[k - 1]
        depth = np.inf
        if ys.start == 0 or ys.stop == H:
            depth = min(depth, ys.stop - ys.start)
        if xs.start == 0 or xs.stop == W:
            depth = min(depth, xs.stop - xs.start)
        feats.append((area[k] / typical, min(depth / diam, 3.0), contact[k] / diam))
    return ids, np.asarray(feats, float)


def drop_border_objects_by_classifier(labels: np.ndarray, classifier: dict) -> np.ndarray:
    """Zero the border-touching objects that a logistic model (``{"coef": [3 floats],
    "intercept": float}`` over :func:`border_features`, fitted by the trainer on its training
    masks) predicts the annotators left out (probability of annotated < 0.5)."""
    lab = np.asarray(labels)
    ids, X = border_features(lab)
    if ids.size == 0 or X.shape[0] == 0:
        return lab
    z = X @ np.asarray(classifier["coef"], float) + float(classifier["intercept"])
    drop = np.zeros(int(lab.max()) + 1, bool)
    drop[ids[z < 0]] = True
    return np.where(drop[lab], 0, lab).astype(lab.dtype)


def drop_small_border_objects(labels: np.ndarray, fraction: float) -> np.ndarray:
    """Zero the objects touching the image border smaller than ``fraction`` × the median
    area of the objects that do not touch it."""
    lab = np.asarray(labels)
    area = np.bincount(lab.ravel().astype(np.int64))
    edge = np.zeros(area.size, bool)
    edge[np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])] = True
    edge[0] = False
    inner = area[1:][(~edge[1:]) & (area[1:] > 0)]
    if inner.size == 0:
        return lab
    drop = edge & (area < fraction * float(np.median(inner)))
    return np.where(drop[lab], 0, lab).astype(lab.dtype)
