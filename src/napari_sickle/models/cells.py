"""Splitting a detected region into its cells, for the multi-label classifier.

A region of touching or overlapping cells is classified by classifying each of its cells
and taking, for every type, the largest probability over the cells (a multiple-instance
"any cell of this type" rule; the classifier is trained with the same rule, so a cell the
split misses or merges is still learned from). This module finds the cells:

* :func:`cell_foreground`: cell pixels from the edges, not the grey level (the Xu et al.
  crops are outline-style cells whose interior is close to the background, and smears have
  uneven illumination): Sobel magnitude of the lightly smoothed grey image, hysteresis
  thresholded at ``low`` / ``high`` times its median (most pixels of a region are
  background), closed, hole-filled and opened; components much smaller than the largest
  are dropped.
* :func:`split_cells`: marker watershed of the (smoothed) distance transform of that
  foreground, markers from its regional maxima (:func:`skimage.morphology.h_maxima`), so
  touching cells become separate candidates; pieces of neighbouring cells cut by the
  region's edge are dropped.
* :func:`cell_canvases`: for each candidate, its pixels (mask dilated by a few pixels, soft
  edge) on the region's background colour, centred on a square canvas of at least
  ``min_side`` native pixels, so a cell taken from a cluster looks like a single-cell crop.

How often the split finds exactly the cells of a composed patch: docs/results.md.
No Qt/napari imports here.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: default parameters of the split (stored in a classifier's config as ``cell_split``)
DEFAULT_SPLIT = {
    "low": 2.0,
    "high": 5.0,
    "closing": 3,
    "h": 1.0,
    "min_peak": 6.0,
    "peak_fraction": 0.4,
    "edge_fraction": 0.4,
    "margin": 4,
    "dilate": 3,
}


def _gray(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, np.float32)
    return img[..., :3].mean(axis=2) if img.ndim == 3 else img


def cell_foreground(
    image: np.ndarray, low: float = 2.0, high: float = 5.0, closing: int = 3, min_relative: float = 0.1, **_ignored
) -> np.ndarray:
    """Boolean mask of the cell pixels of a region image (see the module docstring)."""
    from skimage.filters import apply_hysteresis_threshold, sobel
    from skimage.morphology import disk

    g = ndi.gaussian_filter(_gray(image), 1.0)
    if g.shape[0] < 8 or g.shape[1] < 8:
        return np.zeros(g.shape, bool)
    e = sobel(g)
    med = float(np.median(e)) + 1e-3
    fg = apply_hysteresis_threshold(e, low * med, high * med)
    p = int(closing) + 2
    fg = ndi.binary_closing(np.pad(fg, p), disk(int(closing)))[p:-p, p:-p]
    fg = ndi.binary_fill_holes(fg)
    fg = ndi.binary_opening(fg, disk(2))
    lab, n = ndi.label(fg)
    if n == 0:
        return fg
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return (sizes >= max(30, min_relative * sizes.max()))[lab]


def split_cells(image: np.ndarray, params: dict | None = None) -> np.ndarray:
    """Instance labels (int32, 0 = background) of the cells of a region image.

    Returns all zeros when no cell is found (the caller then treats the whole region as one
    cell)."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    p = {**DEFAULT_SPLIT, **(params or {})}
    fg = cell_foreground(image, **p)
    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(fg).astype(np.float32), 1.5)
    comps, n = ndi.label(fg)
    # markers: the regional maxima of the distance map at least ``h`` px above their
    # surroundings (a thin cell beside a large one keeps its own, which a fixed-window
    # peak search suppresses), and at least ``min_peak`` px deep
    hm, k = ndi.label(h_maxima(dist, float(p["h"])))
    peaks = np.asarray(ndi.maximum_position(dist, hm, np.arange(1, k + 1)), dtype=np.int64).reshape(-1, 2)
    peaks = peaks[dist[tuple(peaks.T)] >= float(p["min_peak"])]
    if len(peaks):
        # a cell's centre is far from its edge; a ridge of a rim or of a spiky outline is not:
        # keep the peaks at least ``peak_fraction`` as deep as the deepest of their component
        deepest = ndi.maximum(dist, comps, index=np.arange(1, n + 1))
        depth = dist[tuple(peaks.T)]
        peaks = peaks[depth >= float(p["peak_fraction"]) * np.asarray(deepest)[comps[tuple(peaks.T)] - 1]]
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # a component without a peak (a thin cell) is one candidate of its own
    unmarked = np.setdiff1d(np.arange(1, n + 1), np.unique(comps[markers > 0]))
    for k, c in enumerate(unmarked):
        ys, xs = np.nonzero(comps == c)
        j = int(np.argmax(dist[ys, xs]))
        markers[ys[j], xs[j]] = len(peaks) + 1 + k
    labels = watershed(-dist, markers, mask=fg).astype(np.int32)
    return drop_foreign_pieces(labels, comps, float(p["edge_fraction"]))


def drop_foreign_pieces(labels: np.ndarray, comps: np.ndarray | None = None, edge_fraction: float = 0.4) -> np.ndarray:
    """Cells of neighbouring regions cut by the region's edge are not cells of the region:
    drop the pieces on the edge that are small (< ``edge_fraction`` of the largest) or apart
    from the region's main group of touching cells (the foreground component ``comps``
    holding most pixels; default: the connected components of ``labels > 0``), and pieces
    under 8 % of the largest. Returns labels renumbered 1..k."""
    labels = np.asarray(labels, np.int32).copy()
    if labels.max() <= 0:
        return np.zeros(labels.shape, np.int32)
    if comps is None:
        comps = ndi.label(labels > 0)[0]
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    edge = edge[edge > 0]
    comp_size = np.bincount(comps.ravel())
    comp_size[0] = 0
    main = int(comp_size.argmax())
    comp_of = np.zeros(labels.max() + 1, np.int64)
    comp_of[labels.ravel()] = comps.ravel()
    cut = edge[(sizes[edge] < float(edge_fraction) * sizes.max()) | (comp_of[edge] != main)]
    small = np.nonzero((sizes > 0) & (sizes < 0.08 * sizes.max()))[0]
    small = np.union1d(small, cut)
    if len(small):
        labels[np.isin(labels, small)] = 0
    # renumber 1..k
    ids = np.unique(labels[labels > 0])
    lut = np.zeros(labels.max() + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[labels]


def region_background(region: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Median colour of a region's background pixels (far from any cell), else of its border."""
    far = ~ndi.binary_dilation(fg, iterations=3) if fg.any() else np.ones(fg.shape, bool)
    px = region[far] if far.sum() >= 16 else np.concatenate([region[0], region[-1], region[:, 0], region[:, -1]])
    return np.median(px.reshape(-1, region.shape[-1]), axis=0)


def cell_canvases(
    image: np.ndarray,
    box,
    min_side: int,
    params: dict | None = None,
    splitter=None,
    occlusion: str = "none",
    partners: list | None = None,
) -> list[np.ndarray]:
    """Square uint8 canvases (s, s, 3), one per cell of the region ``box`` (x0, y0, x1, y1;
    max exclusive) of an RGB uint8 ``image``: each cell on the region's background colour,
    centred, ``s = max(cell height, cell width, min_side)``. One canvas of the whole region
    when no cell is found. ``splitter(region) -> labels`` replaces :func:`split_cells` (the
    region is the box plus ``margin`` px, clipped to the image). With an ``occlusion`` rule
    (:mod:`napari_sickle.models.occlusion`) the canvases of the completed cells follow, and
    ``partners`` (a list) receives, for each, the index of the cell it completes."""
    p = {**DEFAULT_SPLIT, **(params or {})}
    img = np.asarray(image)
    H, W = img.shape[:2]
    x0, y0, x1, y1 = [float(v) for v in box]
    m = int(p["margin"])
    x0, y0 = int(np.clip(np.floor(x0) - m, 0, W - 1)), int(np.clip(np.floor(y0) - m, 0, H - 1))
    x1, y1 = int(np.clip(np.ceil(x1) + m, x0 + 1, W)), int(np.clip(np.ceil(y1) + m, y0 + 1, H))
    region = img[y0:y1, x0:x1, :3]
    labels = split_cells(region, p) if splitter is None else np.asarray(splitter(region), np.int32)
    fg = labels > 0
    bg = region_background(region.astype(np.float32), fg)
    out = []
    n = int(labels.max())
    if n <= 1:  # one cell (or none found): the region as it is, as a single-cell crop
        return [_centre(region.astype(np.float32), np.ones(region.shape[:2], np.float32), bg, min_side)]
    for c in range(1, n + 1):
        mask = ndi.binary_dilation(labels == c, iterations=int(p["dilate"]))
        alpha = ndi.gaussian_filter(mask.astype(np.float32), 1.0)
        out.append(_centre(region.astype(np.float32), alpha, bg, min_side, mask))
    if occlusion != "none":
        from .occlusion import completed

        regf = region.astype(np.float32)
        for c in range(1, n + 1):
            done = completed(labels, c, regf, reach=int(p["dilate"]) + 4)
            if done is None:
                continue
            mask = ndi.binary_dilation(done[0] == c, iterations=int(p["dilate"]))
            alpha = ndi.gaussian_filter(mask.astype(np.float32), 1.0)
            out.append(_centre(done[1], alpha, bg, min_side, mask))
            if partners is not None:
                partners.append(c - 1)
    return out


def _centre(region, alpha, bg, min_side, mask=None) -> np.ndarray:
    """``region`` blended over ``bg`` by ``alpha``, cut to ``mask``'s box (whole region without
    one) and centred on a square canvas of at least ``min_side`` px filled with ``bg``."""
    if mask is None:
        y0, y1, x0, x1 = 0, region.shape[0], 0, region.shape[1]
    else:
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    cut = region[y0:y1, x0:x1] * alpha[y0:y1, x0:x1, None] + bg * (1 - alpha[y0:y1, x0:x1, None])
    h, w = cut.shape[:2]
    side = max(h, w, int(min_side))
    canvas = np.empty((side, side, 3), np.float32)
    canvas[:] = bg
    oy, ox = (side - h) // 2, (side - w) // 2
    canvas[oy : oy + h, ox : ox + w] = cut
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
