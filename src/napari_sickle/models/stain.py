"""Cell lightness of a brightfield smear, and matching it to a classifier's training smears.

Another lab's camera and stain render red cells paler, or with more contrast inside each cell,
than the smears a classifier learned from; the shipped classifier then reads many normal cells as
Echinocyte or as no type at all (docs/models.md). ``match_lightness`` changes only the CIELAB
lightness L*: an affine map that gives the smear's cell pixels the reference mean and spread
(``stain_reference``, the medians over the training smears, stored in the classifier checkpoint
as ``config["stain_reference"]``); hue and saturation (a*, b*) are left as they are.
``analysis.smear.classify_regions`` uses it only on smears whose type calls are uncertain.
No Qt/napari imports here.
"""

from __future__ import annotations

import numpy as np

#: fewer cell pixels than this: no lightness is measured (and nothing is matched)
MIN_CELL_PIXELS = 200


def cell_lightness(rgb: np.ndarray) -> tuple[float, float] | None:
    """Mean and standard deviation of L* (0-100) over the cell pixels of an RGB uint8 smear
    (``models.scale.cell_foreground``: darker than Otsu's threshold, pale centres included),
    or None when it has too few."""
    from skimage.color import rgb2lab

    from .scale import cell_foreground

    fg = cell_foreground(rgb)
    if fg is None or int(fg.sum()) < MIN_CELL_PIXELS:
        return None
    L = rgb2lab(np.asarray(rgb)[fg][None].astype(np.float32) / 255.0)[0, :, 0]
    return float(L.mean()), float(L.std())


def stain_reference(measures) -> dict:
    """The reference of a set of training smears: the medians of their :func:`cell_lightness`
    (pairs; None entries skipped)."""
    m = np.array([x for x in measures if x is not None], np.float64).reshape(-1, 2)
    if not len(m):
        raise ValueError("no smear with enough cell pixels to measure a stain reference")
    return {
        "cell_lightness": float(np.median(m[:, 0])),
        "cell_lightness_sd": float(np.median(m[:, 1])),
        "smears": len(m),
    }


def match_lightness(rgb: np.ndarray, ref: dict, rows: int = 256) -> np.ndarray | None:
    """``rgb`` (uint8) with L* mapped so that its cell pixels have the reference mean and
    spread; None when the cells cannot be measured. Converted ``rows`` image rows at a time
    (float32), so a large smear needs little more memory than its output."""
    from skimage.color import lab2rgb, rgb2lab

    own = cell_lightness(rgb)
    if own is None:
        return None
    mean, sd = own
    gain = float(ref["cell_lightness_sd"]) / max(sd, 1e-3)
    out = np.empty_like(np.asarray(rgb, np.uint8))
    for r0 in range(0, out.shape[0], rows):
        lab = rgb2lab(
            np.asarray(rgb[r0 : r0 + rows], np.float32) / 255.0
        )  # float32: far faster than from uint8 (float64)
        lab[..., 0] = np.clip((lab[..., 0] - mean) * gain + float(ref["cell_lightness"]), 0.0, 100.0)
        out[r0 : r0 + rows] = (np.clip(lab2rgb(lab), 0.0, 1.0) * 255.0).round()
    return out
