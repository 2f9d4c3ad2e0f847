"""Cell diameter of a smear and rescaling to a detector's training diameter (Qt-free).

Smears from different microscopes differ 2-3x in magnification (e.g. about 45 px per red cell
on a 1000x Chula RBC-12 photo, about 100 px on BCCD and BBBC041). As in cellpose, a detector
trained at one cell diameter sees every image rescaled so that its cells have that diameter:

* :func:`estimate_cell_diameter`: the median cell diameter of a brightfield smear, estimated
  from the image alone: Otsu foreground (cells darker than the background, holes filled so
  pale centres count), Euclidean distance transform, its regional maxima (one per cell, also
  inside groups of touching cells); the diameter is twice the median of the maxima weighted by
  their value squared (a disc of radius r has one peak of r; the many small peaks of cell
  fragments, pale rims and debris weigh little). Large images are measured on a 2x/4x
  subsampled copy. The estimate runs a little below the annotated box size (boxes include the
  rim; ellipses have a shorter inscribed radius); a detector trained on images rescaled by the
  same estimate absorbs that.
* :func:`rescale_factor`: training diameter / image diameter, clipped to a sane range;
* :func:`rescale_image` / :func:`boxes_to_original`: apply it and map boxes back.
"""

from __future__ import annotations

import numpy as np

#: Foregrounds smaller than this fraction of the image give no estimate.
MIN_FOREGROUND_FRACTION = 0.005
#: Peaks of the distance transform below this (px, after subsampling) are noise.
MIN_PEAK = 2.0
#: rescale_factor is clipped to this range.
SCALE_RANGE = (1 / 8, 2.0)


def cell_foreground(image, min_contrast: float = 12.0) -> np.ndarray | None:
    """Cells of a brightfield image (H, W[, 3]): darker than Otsu's threshold on the gray
    image, 1 px opening, holes filled (pale centres). None when the two classes are less than
    ``min_contrast`` gray levels apart (no cells)."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    a = np.asarray(image, dtype=np.float32)
    g = a[..., :3].mean(axis=2) if a.ndim == 3 else a
    if g.size == 0 or float(g.max() - g.min()) < 1e-3:
        return None
    t = threshold_otsu(g)
    dark, light = g[g < t], g[g >= t]
    if len(dark) == 0 or len(light) == 0 or float(light.mean() - dark.mean()) < min_contrast:
        return None
    fg = ndi.binary_opening(g < t, iterations=1)
    return ndi.binary_fill_holes(fg)


def estimate_cell_diameter(image, max_side: int = 800) -> float | None:
    """Median cell diameter (px of ``image``) of a brightfield smear, or None when no cells are
    found. ``image``: (H, W) gray or (H, W, 3) RGB, any range; see the module docstring."""
    from scipy import ndimage as ndi

    g = np.asarray(image, dtype=np.float32)
    if g.ndim == 3 and g.shape[2] == 1:
        g = g[..., 0]
    if g.ndim not in (2, 3) or min(g.shape[:2]) < 8:
        return None
    step = 1
    while max(g.shape[:2]) / step > max_side:
        step *= 2
    if step > 1:  # block mean (an antialiased subsample)
        h, w = (g.shape[0] // step) * step, (g.shape[1] // step) * step
        g = g[:h, :w].reshape((h // step, step, w // step, step) + g.shape[2:]).mean(axis=(1, 3))
    fg = cell_foreground(g)
    if fg is None or fg.mean() < MIN_FOREGROUND_FRACTION:
        return None
    dt = ndi.distance_transform_edt(fg)
    # regional maxima: equal to the 5x5 maximum and above the noise floor
    peaks = (dt == ndi.maximum_filter(dt, size=5)) & (dt >= MIN_PEAK)
    vals = dt[peaks]
    if len(vals) == 0:
        return None
    # plateaus give several equal maxima: one value per connected peak
    lab, n = ndi.label(peaks)
    if n > 0:
        vals = np.asarray(ndi.maximum(dt, lab, index=np.arange(1, n + 1)), dtype=np.float64)
    # fragments of cells (pale rims, debris) give many small peaks: weight each peak by the area
    # of its inscribed disc (value squared) and take the weighted median
    vals = np.sort(vals)
    cw = np.cumsum(vals**2)
    return float(2.0 * vals[np.searchsorted(cw, 0.5 * cw[-1])] * step)


def rescale_factor(diameter: float | None, target: float, scale_range=SCALE_RANGE) -> float:
    """``target / diameter`` clipped to ``scale_range``; 1.0 when the diameter is unknown."""
    if diameter is None or not np.isfinite(diameter) or diameter <= 0:
        return 1.0
    lo, hi = scale_range
    return float(np.clip(float(target) / float(diameter), lo, hi))


def rescale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """(H, W[, C]) image resized by ``factor`` (antialiased when shrinking); same dtype."""
    if factor == 1.0:
        return np.asarray(image)
    from skimage.transform import resize

    a = np.asarray(image)
    shape = (max(1, round(a.shape[0] * factor)), max(1, round(a.shape[1] * factor))) + a.shape[2:]
    out = resize(a, shape, order=1, anti_aliasing=factor < 1.0, preserve_range=True)
    return (
        out.astype(a.dtype)
        if np.issubdtype(a.dtype, np.floating)
        else np.clip(np.round(out), 0, np.iinfo(a.dtype).max).astype(a.dtype)
    )


def boxes_to_original(boxes, factor: float) -> np.ndarray:
    """Boxes found on an image rescaled by ``factor`` in the original image's pixels."""
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / float(factor)).astype(np.float32)
