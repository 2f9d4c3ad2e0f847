"""Placing cell patches on a smear: free spots, or pushed against a placed cell until they
touch or overlap it, optionally running off the image edge; and the top-wins instance image
of the placed cells."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _clip(top: int, left: int, h: int, w: int, H: int, W: int):
    """(image slices, patch slices) of the overlap of a patch at (top, left) with an image."""
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(H, top + h), min(W, left + w)
    if y0 >= y1 or x0 >= x1:
        return None
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))


def paste_add(dst: np.ndarray, src: np.ndarray, top: int, left: int) -> None:
    """``dst[top:top+h, left:left+w] += src``, clipped to ``dst``."""
    c = _clip(top, left, src.shape[0], src.shape[1], dst.shape[0], dst.shape[1])
    if c is not None:
        dst[c[0]] += src[c[1]]


def place_cells(
    cells,
    shape,
    rng,
    cluster_fraction=0.3,
    max_overlap=0.2,
    gap=2,
    tries=40,
    progress=None,
    preplaced=(),
    edge_fraction: float = 0.0,
):
    """Place cell masks on an (H, W) image; returns ``[(index, top, left), ...]`` in order.

    Each item of ``cells`` needs ``mask`` (bool, local), ``cy``, ``cx`` (centre in the local
    patch) and ``radius``. With probability ``cluster_fraction`` a cell is pushed against a
    randomly chosen placed cell until it touches it (shares a 4-connected border) and, half
    of the time, further until it overlaps it; it never covers more than ``max_overlap`` of
    its own or another cell's area. Otherwise it goes to a free spot at least ``gap`` px
    from every other cell. Cells that fit nowhere are left out. ``preplaced`` lists
    ``(index, top, left)`` positions fixed in advance.

    ``edge_fraction`` > 0 lets cells run off the image edge (as in real fields of view) by
    up to that fraction of their patch size; ``top``/``left`` may then be negative. A cell
    cut by the edge keeps at least 40% of its area in one 4-connected piece.
    """
    H, W = int(shape[0]), int(shape[1])
    P = 0
    if edge_fraction > 0 and len(cells):
        P = int(max(max(c.mask.shape) for c in cells) * edge_fraction) + 2
    occupancy = np.zeros((H + 2 * P, W + 2 * P), bool)  # padded canvas, image at [P:P+H, P:P+W]
    placed: list = []  # (cell, top, left) in padded coordinates
    out = []
    fixed = set()
    for i, top, left in preplaced:
        m = cells[i].mask
        occupancy[top + P : top + P + m.shape[0], left + P : left + P + m.shape[1]] |= m
        placed.append((cells[i], top + P, left + P))
        out.append((i, top, left))
        fixed.add(i)
    foot = np.ones((2 * gap + 1, 2 * gap + 1), bool)
    visible_ok = _edge_rule(H, W, P)

    for i, cell in enumerate(cells):
        if i in fixed:
            continue
        h, w = cell.mask.shape
        pos = None
        if placed and rng.random() < cluster_fraction:
            pos = _place_touching(cell, placed, occupancy, rng, max_overlap, visible_ok)
        if pos is None:
            pos = _free_spot(cell.mask, occupancy, rng, foot, (H, W), P, edge_fraction, tries, visible_ok)
        if pos is not None:
            top, left = pos
            occupancy[top : top + h, left : left + w] |= cell.mask
            placed.append((cell, top, left))
            out.append((i, top - P, left - P))
        if progress is not None and (i % 20 == 0 or i == len(cells) - 1):
            progress("place cells", i + 1, len(cells))
    return out


def _edge_rule(H: int, W: int, P: int):
    """``visible_ok(mask, top, left)`` (padded coordinates): whether a cell may sit there. With
    no padding ``P`` it must lie inside the image; otherwise a cell cut by the edge keeps at
    least 40% of its area, in one 4-connected piece."""

    def visible_ok(mask, top, left):
        h, w = mask.shape
        if P == 0:
            return top >= 0 and left >= 0 and top + h <= H and left + w <= W
        if top < 0 or left < 0 or top + h > H + 2 * P or left + w > W + 2 * P:
            return False
        c = _clip(top - P, left - P, h, w, H, W)
        if c is None:
            return False
        vis = mask[c[1]]
        if vis.sum() == mask.sum():
            return True
        if vis.sum() < 0.4 * mask.sum():
            return False
        return ndi.label(vis)[1] == 1

    return visible_ok


def _free_spot(mask, occupancy, rng, foot, shape, P: int, edge_fraction: float, tries: int, visible_ok):
    """A random position (top, left), padded coordinates, where ``mask`` keeps the ``foot`` gap
    from every placed cell, or None after ``tries`` draws."""
    H, W = shape
    h, w = mask.shape
    dil = ndi.binary_dilation(mask, foot)
    lo_y, hi_y = (P - int(edge_fraction * h), P + H - h + int(edge_fraction * h)) if P else (0, H - h)
    lo_x, hi_x = (P - int(edge_fraction * w), P + W - w + int(edge_fraction * w)) if P else (0, W - w)
    if hi_y >= lo_y and hi_x >= lo_x:
        for _ in range(tries):
            top = int(rng.integers(lo_y, hi_y + 1))
            left = int(rng.integers(lo_x, hi_x + 1))
            if not visible_ok(mask, top, left):
                continue
            if not (occupancy[top : top + h, left : left + w] & dil).any():
                return top, left
    return None


def paint_instances(items, shape) -> np.ndarray:
    """Instance image from ``[(mask, top, left), ...]``; later items are on top (ids 1..N).

    Diagonal-only contacts between cell pixels are bridged with one pixel so that connected
    regions are the same under 4- and 8-connectivity (readers may use either).
    """
    inst = np.zeros(shape, np.int32)
    for k, (mask, top, left) in enumerate(items):
        c = _clip(top, left, mask.shape[0], mask.shape[1], shape[0], shape[1])
        if c is not None:
            inst[c[0]][mask[c[1]]] = k + 1
    return _merge_fragments(_bridge_diagonals(inst))


def _merge_fragments(inst: np.ndarray) -> np.ndarray:
    """Give each cell one 4-connected piece: occlusion can cut a cell's visible part into
    pieces (e.g. spike tips beyond an overlapping cell); the smaller pieces go to the cell
    that surrounds them most."""
    for k, sl in enumerate(ndi.find_objects(inst), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in sl)
        sub = inst[sl]
        lab, n = ndi.label(sub == k)
        if n <= 1:
            continue
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        main = int(sizes.argmax())
        for j in range(1, n + 1):
            if j == main:
                continue
            frag = lab == j
            ring = ndi.binary_dilation(frag) & ~frag
            nb = sub[ring]
            nb = nb[(nb > 0) & (nb != k)]
            if len(nb):
                sub[frag] = np.bincount(nb).argmax()
    return inst


def _bridge_diagonals(inst: np.ndarray) -> np.ndarray:
    for _ in range(10):
        fg = inst > 0
        a, b, c, d = fg[:-1, :-1], fg[:-1, 1:], fg[1:, :-1], fg[1:, 1:]
        diag = a & d & ~b & ~c  # pixels (y,x) and (y+1,x+1)
        anti = b & c & ~a & ~d  # pixels (y,x+1) and (y+1,x)
        if not (diag.any() or anti.any()):
            break
        ys, xs = np.nonzero(diag)
        inst[ys, xs + 1] = inst[ys, xs]  # fill the upper-right gap pixel
        ys, xs = np.nonzero(anti)
        inst[ys, xs] = inst[ys, xs + 1]  # fill the upper-left gap pixel
    return inst


def _place_touching(cell, placed, occupancy, rng, max_overlap: float, visible_ok):
    """Position (top, left) where the cell touches/overlaps an existing cell, or None."""
    H, W = occupancy.shape
    h, w = cell.mask.shape
    area = int(cell.mask.sum())
    ring = ndi.binary_dilation(cell.mask)  # 4-connected one-pixel ring
    for _ in range(6):
        other, otop, oleft = placed[int(rng.integers(len(placed)))]
        ocy, ocx = otop + other.cy, oleft + other.cx
        theta = rng.uniform(0, 2 * np.pi)
        dirv = np.array([np.sin(theta), np.cos(theta)])
        d = (cell.radius + other.radius) * 1.3
        want_overlap = rng.random() < 0.5
        extra = int(rng.integers(1, max(2, int(0.35 * cell.radius)))) if want_overlap else 0
        touched_at = None
        while d > 0.2 * (cell.radius + other.radius):
            cy, cx = ocy + dirv[0] * d, ocx + dirv[1] * d
            top, left = int(round(cy - cell.cy)), int(round(cx - cell.cx))
            if not visible_ok(cell.mask, top, left):
                break
            sub = occupancy[top : top + h, left : left + w]
            ov = int((sub & cell.mask).sum())
            if ov > max_overlap * area:
                break
            if touched_at is None and (sub & ring).any():
                touched_at = d
            if touched_at is not None and touched_at - d >= extra:
                if _others_ok(top, left, cell.mask, max_overlap, placed):
                    return top, left
                break
            d -= 1.0
    return None


def _others_ok(top, left, mask, max_overlap, placed) -> bool:
    """The new cell may not cover more than max_overlap of any already placed cell."""
    h, w = mask.shape
    for cell, ot, ol in placed:
        oh, ow = cell.mask.shape
        y0, y1 = max(top, ot), min(top + h, ot + oh)
        x0, x1 = max(left, ol), min(left + w, ol + ow)
        if y0 >= y1 or x0 >= x1:
            continue
        a = mask[y0 - top : y1 - top, x0 - left : x1 - left]
        b = cell.mask[y0 - ot : y1 - ot, x0 - ol : x1 - ol]
        if int((a & b).sum()) > max_overlap * cell.mask.sum():
            return False
    return True
