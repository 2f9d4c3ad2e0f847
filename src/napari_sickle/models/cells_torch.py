"""The rule-based cell split of :mod:`napari_sickle.models.cells`, batched in PyTorch.

:func:`napari_sickle.models.cells.split_cells` runs per region on the host (SciPy and
scikit-image). Here its steps run on a batch of regions with torch operators only, on any
device, so a smear's regions are split where the image is:

* regions are padded to a common canvas (each at the top-left corner; :func:`size_groups`),
  and every step uses each region's own size, so a region's labels do not depend on its batch:
  the filters reflect at the region's edges, the morphology sees the outside as the host code
  does, medians and sizes are per region. Filters are sums of shifted views (the same bits
  whatever the batch's shape); disk morphology and 3x3 maxima are ``conv2d`` / ``max_pool2d``
  on CUDA and maxima of shifted views elsewhere (cheaper on CPUs);
* connected components (4-connected): labels hooked with a scatter-min and pointer jumping,
  each component named by its first pixel in raster order, so markers keep the host's order;
* an exact Euclidean distance transform; h-maxima by grey reconstruction (3x3 maxima);
* the marker watershed (:func:`basins`): every pixel climbs its steepest 4-neighbour to a
  local maximum of the smoothed distance map (pointer doubling); marked maxima name their
  basins, and an unmarked basin joins the labelled one it meets at the highest pass, where
  scikit-image's priority flooding enters it first. Boundaries can differ by a pixel where
  basins meet on a plateau or beside an unmarked basin; the number of cells rarely
  (tests/test_cells_torch.py states the agreement floor);
* the pieces of neighbouring cells cut by the region's edge are dropped
  (:func:`napari_sickle.models.cells.drop_foreign_pieces`).

Loops check for convergence every few steps (one host synchronisation per check).
:data:`BACKENDS`: the choices of the crop path (:mod:`napari_sickle.models.crops`); ``"auto"``
is this split on CUDA and the host split elsewhere. No Qt/napari imports.
"""

from __future__ import annotations

import math

import numpy as np

#: cell split backends: the host split (scikit-image), this one, or this one on CUDA only
BACKENDS = ("skimage", "torch", "auto")
#: convergence checks of the iterative loops, every this many steps
CHECK_EVERY = 4
#: at most this many canvas pixels (regions x height x width) per batch, and the size ratio
#: that starts a new batch (:func:`size_groups`): on CPUs, batches of similar sizes waste
#: little on padding; on CUDA, fewer and larger batches mean fewer kernel launches and
#: synchronisations (each batch runs the same sequence of a few thousand small operators)
BATCH_PIXELS, BATCH_RATIO = 1 << 21, 1.25
BATCH_PIXELS_CUDA, BATCH_RATIO_CUDA = 1 << 23, 2.0


def _torch():
    import torch

    return torch


def resolve_backend(backend: str, device=None) -> str:
    """``"skimage"`` or ``"torch"`` for ``backend`` on ``device`` (``"auto"``: torch on CUDA)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown cell split backend {backend!r}; choose one of {BACKENDS}")
    if backend != "auto":
        return backend
    dev = _torch().device(device or "cpu")
    return "torch" if dev.type == "cuda" else "skimage"


# ----------------------------------------------------------------------------- filters
def _reflect(i, n):
    """``scipy.ndimage`` "reflect" index (d c b a | a b c d | d c b a) of ``i`` in ``[0, n)``."""
    m = i % (2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


def _reflect_pad(x, r: int, hs, ws):
    """(B, H, W) -> (B, H + 2r, W + 2r): each region reflected at its own edges (its size
    ``hs[b]`` x ``ws[b]``; what lies beyond it in the canvas is never read for its pixels)."""
    torch = _torch()
    B, H, W = x.shape
    iy = _reflect(np.arange(-r, H + r)[None, :], np.asarray(hs)[:, None])
    ix = _reflect(np.arange(-r, W + r)[None, :], np.asarray(ws)[:, None])
    iy = torch.from_numpy(iy).to(x.device, non_blocking=True)
    ix = torch.from_numpy(ix).to(x.device, non_blocking=True)
    x = x.gather(1, iy[:, :, None].expand(B, H + 2 * r, W))
    return x.gather(2, ix[:, None, :].expand(B, H + 2 * r, W + 2 * r))


def _gauss1d(sigma: float, truncate: float = 4.0):
    """``scipy.ndimage.gaussian_filter``'s 1-D kernel."""
    r = int(truncate * float(sigma) + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * x**2 / float(sigma) ** 2)
    return k / k.sum()


def _sep(x, ky, kx, hs, ws):
    """Separable correlation of (B, H, W) ``x`` with 1-D kernels (odd lengths), reflect mode, as
    weighted sums of shifted views in a fixed order: the same bits whatever the batch's shape
    or the device (no TF32 ``conv2d`` on CUDA, which would round the grey levels)."""
    r = max(len(ky), len(kx)) // 2
    p = _reflect_pad(x, r, hs, ws)
    oy, ox = r - len(ky) // 2, r - len(kx) // 2
    p = p[:, oy : p.shape[1] - oy, ox : p.shape[2] - ox]
    H, W = x.shape[1:]
    out = None
    for i, k in enumerate(ky):
        if k != 0:
            t = p[:, i : i + H] * float(k)
            out = t if out is None else out + t
    p, out = out, None
    for j, k in enumerate(kx):
        if k != 0:
            t = p[:, :, j : j + W] * float(k)
            out = t if out is None else out + t
    return out


def gaussian(x, sigma: float, hs, ws):
    """``scipy.ndimage.gaussian_filter(x, sigma)`` of each region of a (B, H, W) batch."""
    k = _gauss1d(sigma)
    return _sep(x, k, k, hs, ws)


def sobel(x, hs, ws):
    """``skimage.filters.sobel`` (edge magnitude) of each region of a (B, H, W) batch."""
    edge, smooth = np.array([1.0, 0.0, -1.0]), np.array([1.0, 2.0, 1.0]) / 4
    gy = _sep(x, edge, smooth, hs, ws)
    gx = _sep(x, smooth, edge, hs, ws)
    return ((gy * gy + gx * gx) / 2).sqrt()


# -------------------------------------------------------------------------- morphology
def _on_cuda(x) -> bool:
    """Whether the single-kernel forms (``conv2d``, ``max_pool2d``) pay: on CUDA."""
    return x.device.type == "cuda"


def _disk(r: int, device, dtype):
    torch = _torch()
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return torch.tensor((x * x + y * y <= r * r).astype(np.float32), dtype=dtype, device=device)[None, None]


def _dilate(m, r: int, pad_value: float = 0.0):
    """Binary dilation of a float 0/1 (B, H, W) mask by ``disk(r)``, the outside ``pad_value``:
    one ``conv2d`` on CUDA; elsewhere the disk's rows as shifted maxima (much cheaper on CPUs)."""
    torch = _torch()
    import torch.nn.functional as F

    p = F.pad(m[:, None], (r, r, r, r), value=pad_value)[:, 0]
    if _on_cuda(m):  # exact: sums of 0/1 products
        return (F.conv2d(p[:, None], _disk(r, m.device, m.dtype))[:, 0] > 0.5).to(m.dtype)
    H, W = m.shape[1:]
    out, row, width = None, p[:, :, r : r + W], 0
    for dy in range(r, -1, -1):  # half-widths grow as the rows near the centre
        w = int(math.isqrt(r * r - dy * dy))
        for k in range(width + 1, w + 1):
            row = torch.maximum(row, torch.maximum(p[:, :, r - k : r - k + W], p[:, :, r + k : r + k + W]))
        width = w
        for y in {r - dy, r + dy}:
            out = row[:, y : y + H] if out is None else torch.maximum(out, row[:, y : y + H])
    return out


def _max3x3(x):
    """3x3 maximum filter of a (B, H, W) float tensor (outside: -inf)."""
    torch = _torch()
    import torch.nn.functional as F

    if _on_cuda(x):
        return F.max_pool2d(x[:, None], 3, 1, 1)[:, 0]
    p = F.pad(x[:, None], (1, 1, 0, 0), value=float("-inf"))[:, 0]
    r = torch.maximum(torch.maximum(p[:, :, :-2], p[:, :, 2:]), x)
    p = F.pad(r[:, None], (0, 0, 1, 1), value=float("-inf"))[:, 0]
    return torch.maximum(torch.maximum(p[:, :-2], p[:, 2:]), r)


def _erode(m, r: int, pad_value: float):
    """Binary erosion by ``disk(r)``; the outside counts as ``pad_value``."""
    return 1.0 - _dilate(1.0 - m, r, 1.0 - pad_value)


def closing(fg, valid, r: int):
    """``binary_closing`` of each region with the plane outside it empty (the host code pads)."""
    import torch.nn.functional as F

    m = F.pad(fg * valid, (r, r, r, r))
    c = _erode(_dilate(m, r), r, 0.0)
    return c[:, r:-r, r:-r] * valid


def opening(fg, valid, r: int):
    """``scipy.ndimage.binary_opening`` of each region (the outside empty)."""
    return _dilate(_erode(fg * valid, r, 0.0) * valid, r) * valid


# ---------------------------------------------------------------------- connectivity
def label(mask, max_iter: int | None = None):
    """4-connected components of a bool (B, H, W) mask: int64 labels, 0 outside, each component
    named ``1 +`` the flat index (in the whole batch) of its first pixel in raster order.

    Every pixel points to a pixel of its component (its label, at first itself); each step
    takes the smallest label of the 4-neighbourhood, hooks the pixel pointed to onto it (a
    scatter-min, so whole trees merge at once) and follows the pointers twice."""
    torch = _torch()
    B, H, W = mask.shape
    n = B * H * W
    big = n + 1
    idx = torch.arange(1, n + 1, device=mask.device).view(B, H, W)
    lab = torch.where(mask, idx, big)
    limit = max_iter or (H * W + 1)
    # persistent buffers: the padded labels (their four neighbour views) and the flat pointer
    # table (its last entry, the background's, stays ``big``: only ``big`` is ever hooked there)
    p = torch.full((B, H + 2, W + 2), big, dtype=lab.dtype, device=mask.device)
    views = _views(p)
    flat = torch.full((n + 1,), big, dtype=lab.dtype, device=mask.device)
    body = flat[:n].view(B, H, W)
    for it in range(limit):
        p[:, 1:-1, 1:-1] = lab
        nb = torch.minimum(torch.minimum(views[0], views[1]), torch.minimum(views[2], views[3]))
        nb = torch.where(mask, torch.minimum(nb, lab), big)
        body.copy_(lab)
        ptr = lab - 1
        flat.scatter_reduce_(0, ptr.reshape(-1), nb.reshape(-1), "amin")  # hooking
        new = torch.minimum(nb, flat[ptr])
        for _ in range(2):  # pointer jumping
            body.copy_(new)
            new = flat[new - 1]
        done = (it + 1) % 2 == 0 and bool(torch.equal(new, lab))
        lab = new
        if done:
            break
    return torch.where(mask, lab, 0)


def _pad(x, fill):
    """(B, H, W) -> (B, H + 2, W + 2) with a ``fill`` border."""
    torch = _torch()
    B, H, W = x.shape
    p = torch.full((B, H + 2, W + 2), fill, dtype=x.dtype, device=x.device)
    p[:, 1:-1, 1:-1] = x
    return p


def _scatter_max(values, index, n: int):
    torch = _torch()
    out = torch.full((n,), float("-inf"), dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, index, values, "amax")


def _first_max(values, lab, sel, n: int):
    """Per label (``lab`` values < ``n``, over the pixels ``sel``): the flat index (1 + ...) of
    its largest value's first pixel in raster order; ``lab.numel() + 1`` for labels without pixels."""
    torch = _torch()
    idx = torch.arange(1, lab.numel() + 1, device=lab.device).view(lab.shape)
    vmax = _scatter_max(values[sel], lab[sel], n)
    at = sel & (values == vmax[lab])
    first = torch.full((n,), lab.numel() + 1, dtype=torch.int64, device=lab.device)
    return first.scatter_reduce(0, lab[at], idx[at], "amin")


# ------------------------------------------------------------------------ components
def foreground(gray, valid, hs, ws, p: dict):
    """:func:`napari_sickle.models.cells.cell_foreground` of a (B, H, W) grey batch: the cell
    mask (bool) and its 4-connected component labels (:func:`label`)."""
    torch = _torch()
    B, H, W = gray.shape
    g = gaussian(gray, 1.0, hs, ws)
    e = sobel(g, hs, ws)
    n = torch.from_numpy(np.asarray(hs, np.int64) * np.asarray(ws, np.int64)).to(gray.device)
    s = torch.where(valid, e, float("inf")).reshape(B, -1).sort(1).values
    med = (s.gather(1, ((n - 1) // 2)[:, None]) + s.gather(1, (n // 2)[:, None])) / 2 + 1e-3
    med = med.view(B, 1, 1)
    low = valid & (e > float(p["low"]) * med)
    high = valid & (e > float(p["high"]) * med)
    lab = label(low)
    hit = torch.zeros(B * H * W + 1, dtype=torch.bool, device=gray.device)
    hit[lab[high]] = True
    hit[0] = False
    vf = valid.to(gray.dtype)
    fg = closing(hit[lab].to(gray.dtype), vf, int(p["closing"]))
    fg = _fill_holes(fg > 0.5, valid)
    fg = opening(fg.to(gray.dtype), vf, 2) > 0.5
    small = torch.from_numpy((np.asarray(hs) < 8) | (np.asarray(ws) < 8)).to(gray.device)
    fg &= ~small.view(B, 1, 1)
    comps = label(fg)
    sizes = torch.bincount(comps.reshape(-1), minlength=B * H * W + 1)
    sizes[0] = 0
    sample = torch.arange(B * H * W + 1, device=gray.device).clamp(min=1).sub_(1) // (H * W)
    largest = torch.zeros(B, dtype=sizes.dtype, device=gray.device).scatter_reduce(0, sample, sizes, "amax")
    thr = torch.clamp(float(p.get("min_relative", 0.1)) * largest.to(torch.float64), min=30.0)
    keep = sizes.to(torch.float64) >= thr[sample]
    keep[0] = False
    comps = torch.where(keep[comps], comps, 0)
    return comps > 0, comps


def _fill_holes(fg, valid):
    """``scipy.ndimage.binary_fill_holes`` of each region: background not 4-connected to the
    region's edge is filled (the canvas beyond the region joins the outside)."""
    torch = _torch()
    bg = ~fg | ~valid
    lab = label(bg)
    seed = ~valid
    seed[:, [0, -1], :] = True
    seed[:, :, [0, -1]] = True
    seed &= bg
    outside = torch.zeros(lab.numel() + 1, dtype=torch.bool, device=fg.device)
    outside[lab[seed]] = True
    return valid & (fg | ~outside[lab])


def distance(fg, valid):
    """Exact Euclidean distance of each foreground pixel to the nearest background pixel of its
    region (``scipy.ndimage.distance_transform_edt``), float32 (B, H, W)."""
    torch = _torch()
    B, H, W = fg.shape
    bg = valid & ~fg
    inf = float(4 * (H + W) ** 2)
    y = torch.arange(H, device=fg.device, dtype=torch.float32).view(1, H, 1).expand(B, H, W)
    above = torch.where(bg, y, -inf).cummax(1).values
    below = torch.where(bg, y, inf).flip(1).cummin(1).values.flip(1)
    d1 = torch.minimum(y - above, below - y).clamp(max=inf)
    d2 = torch.where(valid, d1 * d1, inf)
    best = d2
    # no pixel is farther from the background than along its own row or column
    x = torch.arange(W, device=fg.device, dtype=torch.float32).view(1, 1, W).expand(B, H, W)
    left = torch.where(bg, x, -inf).cummax(2).values
    right = torch.where(bg, x, inf).flip(2).cummin(2).values.flip(2)
    bound = torch.minimum(d1, torch.minimum(x - left, right - x))
    bound = torch.where(fg, bound, 0.0).amax()
    reach = int(min(float(bound), W - 1))
    if reach > 0:  # column offsets beyond the bound cannot win; all offsets of a block at once
        import torch.nn.functional as F

        win = F.pad(d2[:, None], (reach, reach), value=inf)[:, 0].unfold(2, W, 1)  # (B, H, 2R+1, W)
        k2 = (torch.arange(-reach, reach + 1, device=fg.device, dtype=torch.float32) ** 2).view(1, 1, -1, 1)
        step = max(1, (1 << (27 if fg.device.type == "cuda" else 25)) // max(1, B * H * W))
        for k0 in range(0, 2 * reach + 1, step):
            best = torch.minimum(best, (win[:, :, k0 : k0 + step] + k2[:, :, k0 : k0 + step]).amin(2))
    return torch.where(fg, best.sqrt(), 0.0)


# ------------------------------------------------------------------ markers, watershed
def h_maxima(dist, valid, h: float):
    """``skimage.morphology.h_maxima(dist, h)`` of each region (float32 maps): grey
    reconstruction by dilation (8-connected) of ``dist - h`` under ``dist``."""
    torch = _torch()
    B, H, W = dist.shape
    img = torch.where(valid, dist, float("-inf"))
    res = 2 * float(np.finfo(np.float32).resolution) * dist.abs()
    rec = torch.where(valid, dist - h - res, float("-inf"))
    for it in range(H * W + 1):
        nxt = torch.minimum(_max3x3(rec), img)
        done = (it + 1) % CHECK_EVERY == 0 and bool(torch.equal(nxt, rec))
        rec = nxt
        if done:
            break
    hi = img.reshape(B, -1).amax(1)
    lo = torch.where(valid, dist, float("inf")).reshape(B, -1).amin(1)
    flat = (hi - lo) < h  # skimage: no maxima when h exceeds the range
    return valid & ((dist - rec) >= h) & ~flat.view(B, 1, 1)


def markers(dist, fg, comps, valid, p: dict):
    """Watershed markers of :func:`napari_sickle.models.cells.split_cells`: the first pixel of
    each h-maximum's largest value, kept when at least ``min_peak`` deep and ``peak_fraction``
    as deep as its component's deepest pixel; a component without one gets one at its deepest
    pixel. Returns int64 (B, H, W): 0, or a key that orders the markers of a region as the
    host code numbers them (peaks in raster order of their maxima, then the other components)."""
    torch = _torch()
    B, H, W = dist.shape
    hw, n = H * W, B * H * W + 1
    idx = torch.arange(1, n, device=dist.device).view(B, H, W)
    hm = h_maxima(dist, valid, float(p["h"]))
    hl = label(hm)
    first = _first_max(dist, hl, hm, n)
    peak = hm & (first[hl] == idx)
    deepest = _scatter_max(dist[fg], comps[fg], n)
    peak &= dist >= float(p["min_peak"])
    peak &= dist >= float(p["peak_fraction"]) * deepest[comps].clamp(min=0)
    peak &= fg
    has = torch.zeros(n, dtype=torch.bool, device=dist.device)
    has[comps[peak]] = True
    cfirst = _first_max(dist, comps, fg, n)
    other = fg & ~has[comps] & (cfirst[comps] == idx)
    b = (idx - 1) // hw
    key = torch.where(peak, hl - 1 - b * hw, (comps - 1 - b * hw) + hw)
    return torch.where(peak | other, b * 2 * hw + key + 1, 0)


def _views(p):
    """The four 4-neighbour views of a (B, H + 2, W + 2) padded tensor, (up, down, left, right)."""
    return (p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:])


def _jump(ptr, limit: int):
    """Follow the pointers (1 + flat index; a root points to itself) to their roots by doubling."""
    torch = _torch()
    for it in range(limit):
        nxt = ptr.reshape(-1)[ptr - 1]
        done = bool(torch.equal(nxt, ptr))
        ptr = nxt
        if done:
            break
    return ptr


def basins(dist, fg, seeds):
    """Marker watershed of ``-dist`` within ``fg`` (4-connected) by basins: every pixel follows
    its steepest-ascent 4-neighbour (pointer doubling) to a local maximum; a marked maximum
    names its basin; an unmarked basin joins the labelled basin it meets at the highest pass
    (largest ``min(dist p, dist q)`` over the pixel pairs across their boundary, through
    chains of basins), which is where priority flooding enters it first. Returns int64 labels
    (the seeds' values) on ``fg``."""
    torch = _torch()
    B, H, W = dist.shape
    n = B * H * W
    idx = torch.arange(1, n + 1, device=dist.device).view(B, H, W)
    d = torch.where(fg, dist, float("-inf"))
    dviews, iviews = _views(_pad(d, float("-inf"))), _views(_pad(idx, 0))
    best, parent = d, idx
    for dn, iv in zip(dviews, iviews):
        better = dn > best
        best, parent = torch.where(better, dn, best), torch.where(better, iv, parent)
    parent = torch.where(fg & (seeds == 0), parent, idx)
    root = torch.where(fg, _jump(parent, 2 * (H + W)), 0)
    # basin values: a marked basin +inf, the others the best pass found so far
    val = torch.full((n + 1,), float("-inf"), device=dist.device)
    lab = torch.zeros(n + 1, dtype=torch.int64, device=dist.device)
    marked = seeds > 0
    val[idx[marked]] = float("inf")
    lab[idx[marked]] = seeds[marked]
    rviews = _views(_pad(root, 0))
    pairs = [(fg & (rq > 0) & (rq != root), rq, torch.minimum(d, dq)) for rq, dq in zip(rviews, dviews)]
    # the pixel pairs across basin boundaries (one synchronisation for their number)
    ok = torch.cat([o.reshape(-1) for o, _, _ in pairs]).nonzero()[:, 0]
    tgt = torch.cat([root.reshape(-1)] * 4)[ok]
    src = torch.cat([rq.reshape(-1) for _, rq, _ in pairs])[ok]
    pas = torch.cat([ps.reshape(-1) for _, _, ps in pairs])[ok]
    free = val == float("-inf")
    for it in range(n + 1):
        cand = torch.minimum(val[src], pas)
        new = val.scatter_reduce(0, tgt, cand, "amax")
        new = torch.where(free, new, val)
        new[0] = float("-inf")
        win = (cand == new[tgt]) & (cand > val[tgt]) & (cand > float("-inf"))
        key = torch.where(win, lab[src], torch.iinfo(torch.int64).max)
        pick = torch.full_like(lab, torch.iinfo(torch.int64).max).scatter_reduce(0, tgt, key, "amin")
        lab = torch.where((new > val) & free, pick, lab)
        done = bool(torch.equal(new, val))
        val = new
        if done:
            break
    return torch.where(fg, lab[root], 0)


def drop_pieces(lab, comps, valid, edge_fraction: float):
    """:func:`napari_sickle.models.cells.drop_foreign_pieces` of each region, and its labels
    renumbered 1..k in the order of their keys: int32 (B, H, W)."""
    torch = _torch()
    B, H, W = lab.shape
    dev = lab.device
    fdt = torch.float32 if dev.type == "mps" else torch.float64
    uniq, dense = torch.unique(torch.cat([lab.new_zeros(1), lab.reshape(-1)]), return_inverse=True)
    dense = dense[1:].view(B, H, W)
    m = len(uniq)
    sample = ((uniq - 1).clamp(min=0) // (2 * H * W)).clamp(max=B - 1)
    sizes = torch.bincount(dense.reshape(-1), minlength=m)
    sizes[0] = 0
    largest = torch.zeros(B, dtype=sizes.dtype, device=dev).scatter_reduce(0, sample, sizes, "amax")
    up, down, left, right = _views(_pad(valid, False))
    border = valid & ~(up & down & left & right)
    edge = torch.zeros(m, dtype=torch.bool, device=dev)
    edge[dense[border]] = True
    comp_of = torch.zeros(m, dtype=comps.dtype, device=dev).scatter_reduce(
        0, dense.reshape(-1), comps.reshape(-1), "amax"
    )
    # the main component: the largest, the first in raster order among equals
    csz = torch.bincount(comps.reshape(-1), minlength=B * H * W + 1)[comps].float()
    px_sample = torch.arange(B, device=dev).view(B, 1, 1).expand(B, H, W)
    first = _first_max(csz, px_sample, comps > 0, B)  # past the end where no component: no labels there
    main = comps.reshape(-1)[(first - 1).clamp(max=B * H * W - 1)]
    lf = largest.to(fdt)[sample]
    cut = edge & ((sizes.to(fdt) < float(edge_fraction) * lf) | (comp_of != main[sample]))
    small = (sizes > 0) & (sizes.to(fdt) < 0.08 * lf)
    keep = ~(cut | small) & (sizes > 0)
    keep[0] = False
    total = torch.zeros(B, dtype=torch.int64, device=dev).scatter_add(0, sample, keep.long())
    rank = keep.long().cumsum(0) - (total.cumsum(0) - total)[sample]
    return torch.where(keep[dense], rank[dense], 0).to(torch.int32)


# ------------------------------------------------------------------------------- API
def split_batch(images, hs, ws, params: dict | None = None):
    """Instance labels (int32 (B, H, W), 0 = background, each region's cells 1..k) of a batch
    of region images on one device: ``images`` (B, C, H, W) (uint8 or float, 0-255 levels, C 1
    or 3+), region ``b`` being its first ``hs[b]`` rows and ``ws[b]`` columns (host integer
    sequences); zero beyond. Each region's labels are :func:`napari_sickle.models.cells.split_cells`'
    up to the watershed's flooding approximation (module docstring)."""
    torch = _torch()
    from .cells import DEFAULT_SPLIT

    p = {**DEFAULT_SPLIT, **(params or {})}
    x = images.float()
    gray = x[:, :3].mean(1) if x.shape[1] >= 3 else x[:, 0]
    B, H, W = gray.shape
    hs, ws = np.asarray(hs, np.int64).reshape(-1), np.asarray(ws, np.int64).reshape(-1)
    h = torch.from_numpy(hs).to(gray.device).view(B, 1, 1)
    w = torch.from_numpy(ws).to(gray.device).view(B, 1, 1)
    valid = (torch.arange(H, device=gray.device).view(1, H, 1) < h) & (
        torch.arange(W, device=gray.device).view(1, 1, W) < w
    )
    fg, comps = foreground(gray, valid, hs, ws, p)
    dist = gaussian(distance(fg, valid), 1.5, hs, ws)
    dist = torch.where(valid, dist, 0.0)
    seeds = markers(dist, fg, comps, valid, p)
    lab = basins(dist, fg, seeds)
    return drop_pieces(lab, comps, valid, float(p["edge_fraction"]))


def size_groups(hs, ws, budget: int = BATCH_PIXELS, ratio: float | None = BATCH_RATIO) -> list[np.ndarray]:
    """Index groups of regions of similar size (sorted by their longer side, a new group when
    a region is over ``ratio`` times the group's first plus 8 px (``None``: never), or when
    the padded canvases would exceed ``budget`` pixels)."""
    hs, ws = np.asarray(hs, np.int64), np.asarray(ws, np.int64)
    side = np.maximum(hs, ws)
    groups, cur, hm, wm, first = [], [], 0, 0, 0
    for i in np.argsort(side, kind="stable"):
        nh, nw = max(hm, int(hs[i])), max(wm, int(ws[i]))
        if cur and ((len(cur) + 1) * nh * nw > budget or (ratio is not None and side[i] > ratio * first + 8)):
            groups.append(np.asarray(cur))
            cur, nh, nw = [], int(hs[i]), int(ws[i])
        if not cur:
            first = int(side[i])
        cur.append(int(i))
        hm, wm = nh, nw
    if cur:
        groups.append(np.asarray(cur))
    return groups


def _groups(hs, ws, dev, budget):
    """:func:`size_groups` for ``dev``: fewer, larger batches on CUDA."""
    if dev.type == "cuda":
        return size_groups(hs, ws, budget or BATCH_PIXELS_CUDA, BATCH_RATIO_CUDA)
    return size_groups(hs, ws, budget or BATCH_PIXELS, BATCH_RATIO)


def _split_groups(hs, ws, dev, budget, params, make_batch) -> list[np.ndarray]:
    """:func:`split_batch` of each group's batch (``make_batch(group)``), labels back on the host
    (16-bit on the way: a region never holds that many cells)."""
    out: list = [None] * len(hs)
    for g in _groups(hs, ws, dev, budget):
        lab = split_batch(make_batch(g), hs[g], ws[g], params).short().cpu().numpy()
        for k, i in enumerate(g):
            out[i] = lab[k, : hs[i], : ws[i]].astype(np.int32)
    return out


def split_regions(regions, params: dict | None = None, device="cpu", budget: int | None = None) -> list[np.ndarray]:
    """:func:`split_batch` of host region images ((h, w) or (h, w, C) arrays), grouped by size
    (:func:`size_groups`; ``budget`` pixels per batch, default :data:`BATCH_PIXELS`, on CUDA
    :data:`BATCH_PIXELS_CUDA`) and padded per group: one int32 label array per region, in order."""
    torch = _torch()
    dev = torch.device(device)
    regs = [np.asarray(r) for r in regions]
    regs = [r[..., None] if r.ndim == 2 else r[..., :3] for r in regs]
    hs = np.array([r.shape[0] for r in regs], np.int64)
    ws = np.array([r.shape[1] for r in regs], np.int64)

    def batch(g):
        buf = np.zeros((len(g), int(hs[g].max()), int(ws[g].max()), 3), np.float32)
        for k, i in enumerate(g):  # a grey region repeats its channel
            buf[k, : hs[i], : ws[i]] = regs[i] if regs[i].shape[2] == 3 else regs[i][..., :1]
        return torch.from_numpy(buf).to(dev).permute(0, 3, 1, 2)

    return _split_groups(hs, ws, dev, budget, params, batch)


def split_windows(image, windows, params: dict | None = None, device="cpu", budget: int | None = None):
    """:func:`split_batch` of the windows (N, 4) ``x0, y0, x1, y1`` (max exclusive, inside the
    image) of one (H, W, 3+) uint8 image (NumPy, copied to ``device`` once, or a tensor
    there): one int32 label array per window, in order."""
    torch = _torch()
    dev = torch.device(device)
    if isinstance(image, torch.Tensor):
        img = image[..., :3].to(dev)
    else:
        img = torch.from_numpy(np.ascontiguousarray(np.asarray(image)[..., :3]))
        img = img.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else img.to(dev)
    H, W = img.shape[:2]
    win = np.asarray(windows, np.int64).reshape(-1, 4)
    hs, ws = win[:, 3] - win[:, 1], win[:, 2] - win[:, 0]

    def batch(g):
        rows = torch.from_numpy(win[g, 1:2] + np.arange(int(hs[g].max()))).clamp_(max=H - 1).to(dev)
        cols = torch.from_numpy(win[g, 0:1] + np.arange(int(ws[g].max()))).clamp_(max=W - 1).to(dev)
        return img[rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    return _split_groups(hs, ws, dev, budget, params, batch)
