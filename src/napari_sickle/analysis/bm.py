"""Classify single bone-marrow / white cells and explain the decision with CAMs.

Plain Python (no Qt/napari). Cells may have any size, any dtype and 1, 3 or 4 channels;
each is converted to RGB, resized to the model's input size and normalised with the
model's own mean/std. Heatmaps are returned at each cell's own size.

``explain`` uses pytorch-grad-cam with one target per image and always with gradients
enabled (never under ``no_grad``/``inference_mode``). The faithfulness score of each
heatmap comes from ``pytorch_grad_cam.metrics``:

* ``"confidence"`` (default): :class:`CamMultImageConfidenceChange` on the softmax
  probability of the target class: probability(image x heatmap) - probability(image).
  Near 0 or positive: the highlighted pixels alone keep the evidence; strongly negative:
  the heatmap misses it.
* ``"road"``: :class:`ROADCombined` (mean over percentiles of
  least-relevant-first minus most-relevant-first removal; higher is better). Slower.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._progress import report

CAM_METHODS = ("gradcam", "gradcam++", "scorecam", "eigencam", "layercam")
CAM_METHOD_LABELS = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "scorecam": "Score-CAM",
    "eigencam": "Eigen-CAM",
    "layercam": "Layer-CAM",
}
FAITHFULNESS_METRICS = ("confidence", "road", None)


@dataclass
class BMResult:
    """Classification (and optionally explanation) of ``n`` cells."""

    class_names: tuple[str, ...]
    display_names: tuple[str, ...]
    probabilities: np.ndarray  # (n, K) softmax
    top_k: int
    targets: np.ndarray  # (n,) class index explained (== predicted unless chosen)
    shapes: list[tuple[int, int]]  # (H, W) of each input cell
    heatmaps: list[np.ndarray] | None = None  # each (H_i, W_i) float32 in [0, 1]
    faithfulness: np.ndarray | None = None  # (n,)
    method: str | None = None
    faithfulness_metric: str | None = None
    model_arch: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.probabilities.shape[0])

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    def top_k_table(self):
        """Long table: one row per (cell, rank) with ``cell, rank, class, name, probability``."""
        import pandas as pd

        k = min(self.top_k, len(self.class_names))
        order = np.argsort(-self.probabilities, axis=1)[:, :k]
        rows = []
        for i in range(self.n):
            for r, c in enumerate(order[i]):
                rows.append(
                    {
                        "cell": i,
                        "rank": r + 1,
                        "class": self.class_names[c],
                        "name": self.display_names[c],
                        "probability": float(self.probabilities[i, c]),
                    }
                )
        return pd.DataFrame(rows, columns=["cell", "rank", "class", "name", "probability"])

    def summary(self):
        """One row per cell: prediction, its probability, top-k text, target and faithfulness."""
        import pandas as pd

        k = min(self.top_k, len(self.class_names))
        order = np.argsort(-self.probabilities, axis=1)[:, :k]
        pred = self.predicted
        df = pd.DataFrame(
            {
                "cell": np.arange(self.n),
                "prediction": [self.class_names[c] for c in pred],
                "probability": self.probabilities[np.arange(self.n), pred].astype(float),
                "top_k": [
                    "; ".join(f"{self.class_names[c]} {self.probabilities[i, c]:.2f}" for c in order[i])
                    for i in range(self.n)
                ],
                "target": [self.class_names[c] for c in self.targets],
            }
        )
        for r in range(k):
            df[f"top{r + 1}"] = [self.class_names[c] for c in order[:, r]]
            df[f"p_top{r + 1}"] = self.probabilities[np.arange(self.n), order[:, r]].astype(float)
        if self.faithfulness is not None:
            df["faithfulness"] = self.faithfulness.astype(float)
        return df


# --------------------------------------------------------------------------- input handling
def to_rgb_float(img) -> np.ndarray:
    """Any 2-D/3-D cell image -> (H, W, 3) float32 in [0, 1].

    Grey (H,W) or (H,W,1) is repeated to 3 channels, RGBA drops alpha, channels-first
    (C,H,W) with C in 1/3/4 is transposed; uint8 is divided by 255, other integer types
    and out-of-range floats are rescaled by their min/max; bool becomes 0/1.
    """
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"A cell image must be 2-D (grey) or 3-D (H, W, C); got shape {a.shape}.")
    if a.shape[-1] == 4:
        a = a[..., :3]
    elif a.shape[-1] == 2:
        a = a[..., :1]
    elif a.shape[-1] not in (1, 3):
        raise ValueError(f"A cell image needs 1, 3 or 4 channels; got {a.shape[-1]} (shape {a.shape}).")
    if a.shape[0] < 2 or a.shape[1] < 2:
        raise ValueError(f"A cell image must be at least 2x2 pixels; got {a.shape[:2]}.")
    if a.dtype == bool:
        f = a.astype(np.float32)
    elif a.dtype == np.uint8:
        f = a.astype(np.float32) / 255.0
    else:
        f = a.astype(np.float32)
        if not np.all(np.isfinite(f)):
            f = np.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(f.min()), float(f.max())
        if np.issubdtype(a.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
            pass
        elif hi > lo:
            f = (f - lo) / (hi - lo)
        else:
            f = np.zeros_like(f)
    if f.shape[-1] == 1:
        f = np.repeat(f, 3, axis=-1)
    return np.ascontiguousarray(f, dtype=np.float32)


def as_cell_list(images) -> list[np.ndarray]:
    """Split the input into a list of cells (see :func:`classify_cells`)."""
    if isinstance(images, (list, tuple)):
        cells = [np.asarray(c) for c in images]
    else:
        a = np.asarray(images)
        if a.ndim == 2:
            cells = [a]
        elif a.ndim == 3:
            cells = [a] if a.shape[-1] in (3, 4) else list(a)
        elif a.ndim == 4:
            cells = list(a)
        else:
            raise ValueError(f"Cannot interpret an array of shape {a.shape} as cell images.")
    if not cells:
        raise ValueError("No cell images were given.")
    return cells


# --------------------------------------------------------------------------- cell view
#: default crop side / sqrt(area of the stained nucleus) when a model records none: about the
#: 120 px frame of the Zheng crops. Models trained with the current recipe record their own
#: ``crop_factor`` (2.0: a window about the size of the cell; docs/bm.md)
CELL_CROP_FACTOR = 2.75


def white_balance(f: np.ndarray) -> np.ndarray:
    """Divide each channel by the background colour (median of the brightest quarter of the
    pixels), so a yellow, pink or grey smear background becomes white. Brightfield images
    are transmission images: relative to the light that passed through no cell, the stains
    absorb the same fractions under any lamp or camera white point."""
    lum = f.mean(-1)
    bright = lum >= np.percentile(lum, 75)
    bg = np.median(f[bright], axis=0)
    return np.clip(f / np.maximum(bg, 1e-3), 0.0, 1.0).astype(np.float32)


def nucleus_mask(f: np.ndarray) -> np.ndarray:
    """Stained-nucleus pixels of a white-balanced cell image: the darkest of three
    multi-Otsu classes of ``(1 - G) + (B - G)`` (dark and blue-purple: nuclear stain)."""
    from skimage.filters import threshold_multiotsu

    score = (1.0 - f[..., 1]) + (f[..., 2] - f[..., 1])
    try:
        t = threshold_multiotsu(score, 3)[1]
    except ValueError:  # flat image
        return np.zeros(score.shape, bool)
    return score > t


def cell_box(f: np.ndarray, factor: float = CELL_CROP_FACTOR) -> tuple[float, float, float] | None:
    """(centre row, centre column, side) of a square window framing the white cell whose
    nucleus lies nearest the image centre, or None when no nucleus is found.

    The side is ``factor`` x sqrt(nucleus area), so a cell gets the same size in
    pixels whatever the magnification or crop size of the image it comes from."""
    from scipy import ndimage as ndi

    m = nucleus_mask(f)
    h, w = m.shape
    lab, n = ndi.label(m)
    if n == 0:
        return None
    idx = np.arange(1, n + 1)
    area = ndi.sum(m, lab, idx)
    cy, cx = np.array(ndi.center_of_mass(m, lab, idx)).T
    d = np.hypot((cy - h / 2) / h, (cx - w / 2) / w)
    # the main piece: large and central (segmented nuclei come in lobes, handled below)
    main = int(np.argmax(area / (1.0 + 4.0 * d)))
    r = 1.5 * np.sqrt(area[main])
    near = np.hypot(cy - cy[main], cx - cx[main]) <= r
    keep = near & (area >= 0.05 * area[main])
    tot = float(area[keep].sum())
    if tot < 1e-3 * h * w:
        return None
    y = float((cy[keep] * area[keep]).sum() / tot)
    x = float((cx[keep] * area[keep]).sum() / tot)
    return y, x, float(factor) * np.sqrt(tot)


def cell_view(cell, model) -> tuple[np.ndarray, tuple[float, float, float, float] | None]:
    """A cell image as the model sees it before resizing: RGB float in [0, 1], white-balanced
    and framed on the cell when the model's config asks for it (``normalise="background"``,
    ``crop="nucleus"``). Also returns the window (top, left, height, width) in the input's
    pixels, or None when the whole image is used."""
    f = to_rgb_float(cell)
    if getattr(model, "normalise", "none") == "background":
        f = white_balance(f)
    if getattr(model, "crop", "none") != "nucleus":
        return f, None
    box = cell_box(f, float(getattr(model, "crop_factor", CELL_CROP_FACTOR)))
    if box is None:
        return f, None
    y, x, side = box
    side = max(side, 8.0)
    top, left = y - side / 2, x - side / 2
    return crop_window(f, top, left, side, fill=1.0 if getattr(model, "normalise", "none") == "background" else None), (
        top,
        left,
        side,
        side,
    )


def crop_window(f: np.ndarray, top: float, left: float, side: float, fill=None) -> np.ndarray:
    """The square window (sub-pixel position rounded) of ``f``; parts outside the image are
    ``fill`` (None: the image's median colour)."""
    h, w = f.shape[:2]
    t, lft, s = round(top), round(left), max(2, round(side))
    bg = np.median(f.reshape(-1, 3), 0) if fill is None else np.full(3, fill, np.float32)
    out = np.empty((s, s, 3), np.float32)
    out[:] = bg
    y0, x0, y1, x1 = max(t, 0), max(lft, 0), min(t + s, h), min(lft + s, w)
    if y1 > y0 and x1 > x0:
        out[y0 - t : y1 - t, x0 - lft : x1 - lft] = f[y0:y1, x0:x1]
    return out


def preprocess(cells: Sequence[np.ndarray], model, *, boxes: list | None = None) -> Any:
    """Cells -> normalised (N, 3, S, S) float tensor for ``model`` (a BMClassifier).

    Each cell goes through :func:`cell_view` (the model's own background normalisation and
    cell framing, when its config has them), a bilinear antialiased resize to the model's
    input size and the model's mean/std. ``boxes``: a list that receives each cell's window."""
    import torch
    import torch.nn.functional as F

    s = int(model.input_size)
    mean = torch.tensor(model.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(model.std, dtype=torch.float32).view(3, 1, 1)
    out = []
    for c in cells:
        f, box = cell_view(c, model)
        if boxes is not None:
            boxes.append(box)
        t = torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1)[None]
        if t.shape[-2:] != (s, s):
            t = F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        out.append((t[0].clamp(0, 1) - mean) / std)
    return torch.stack(out)


def _resolve_target(target, model) -> int | None:
    if target is None or (isinstance(target, str) and target.lower() in ("", "predicted", "none")):
        return None
    if isinstance(target, (int, np.integer)):
        t = int(target)
        if not 0 <= t < model.n_classes:
            raise ValueError(f"Target class index {t} is out of range 0..{model.n_classes - 1}.")
        return t
    names = [str(n) for n in model.class_names]
    tl = str(target).strip()
    if tl in names:
        return names.index(tl)
    for i in range(model.n_classes):  # full names / "CODE (Full name)"
        if tl.lower() in (model.display_name(i).lower(), model.display_name(i).split(" (")[-1].rstrip(")").lower()):
            return i
    raise ValueError(f"Unknown target class {target!r}; the model's classes are {names}.")


def _result(model, probs, top_k, targets, shapes, **kw) -> BMResult:
    return BMResult(
        class_names=tuple(model.class_names),
        display_names=tuple(model.display_name(i) for i in range(model.n_classes)),
        probabilities=probs,
        top_k=int(top_k),
        targets=np.asarray(targets, dtype=int),
        shapes=shapes,
        model_arch=model.arch,
        **kw,
    )


# --------------------------------------------------------------------------- public API
def classify_cells(
    images, model=None, *, top_k: int = 5, batch_size: int = 32, device="auto", progress=None, tta=None
) -> BMResult:
    """Classify cells.

    ``images``: a list of arrays (each one cell, any size/dtype, 1/3/4 channels), or an
    array: (H,W) or (H,W,3|4) is one cell, (N,H,W) a grey stack, (N,H,W,C) a colour stack.
    ``model``: a BMClassifier, a shipped model name, a checkpoint path, or None for the
    shipped default white-cell model (``models.bm.load_bm_model``).
    ``tta``: None uses the model's recipe (the views its training validated on), else
    ``"none"``, ``"flips"`` or ``"d4"``; the probabilities are the mean softmax over the views,
    so the widget, ``evaluate bm`` and the training log agree cell by cell.
    """
    import torch

    from .._device import resolve_device
    from ..models.bm import load_bm_model, tta_mode, tta_views
    from ..models.fuse import inference_copy

    model = load_bm_model(model)
    mode = tta_mode((getattr(model, "recipe", None) or {}).get("tta", "none") if tta is None else tta)
    cells = [_shape_cell(c) for c in as_cell_list(images)]
    shapes = [tuple(int(s) for s in c.shape[:2]) for c in cells]
    dev = resolve_device(device)
    net = inference_copy(model.module.to(dev))  # batch norm folded; model.module keeps it
    n = len(cells)
    bs = max(1, int(batch_size))
    probs = []
    report(progress, "classify", 0, n)
    for start in range(0, n, bs):
        views = [tta_views(c, mode) for c in cells[start : start + bs]]
        k = len(views[0])
        x = preprocess([v for cell_views in views for v in cell_views], model).to(dev)
        with torch.inference_mode():
            p = torch.softmax(net(x).float(), dim=1).reshape(len(views), k, -1).mean(1)
        probs.append(p.cpu().numpy())
        report(progress, "classify", min(start + bs, n), n)
    p = np.concatenate(probs)
    return _result(model, p, top_k, p.argmax(1), shapes)


def _heatmap_on_cell(g, shape, window) -> np.ndarray:
    """A (1, 1, S, S) heatmap -> (H, W) in the input cell's pixels: resized to the whole cell,
    or, for a framed cell, to its window and pasted there (zero outside the window)."""
    import torch.nn.functional as F

    if window is None:
        return F.interpolate(g, size=shape, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
    top, left, side, _ = window
    s = max(2, round(side))
    h = F.interpolate(g, size=(s, s), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
    out = np.zeros(shape, np.float32)
    t, lft = round(top), round(left)
    y0, x0, y1, x1 = max(t, 0), max(lft, 0), min(t + s, shape[0]), min(lft + s, shape[1])
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = h[y0 - t : y1 - t, x0 - lft : x1 - lft]
    return out


def _shape_cell(c):
    a = np.asarray(c)
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    return a


def _cam_class(method: str):
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM

    m = str(method).lower().replace("-", "").replace("_", "").replace(" ", "")
    table = {
        "gradcam": GradCAM,
        "gradcam++": GradCAMPlusPlus,
        "gradcamplusplus": GradCAMPlusPlus,
        "scorecam": ScoreCAM,
        "eigencam": EigenCAM,
        "layercam": LayerCAM,
    }
    if m not in table:
        raise ValueError(f"Unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}.")
    return table[m], ("gradcam++" if m == "gradcamplusplus" else m)


def _faithfulness_metric(name: str | None):
    """The pytorch-grad-cam metric object for a ``faithfulness`` setting (None: no metric)."""
    if name == "confidence":
        from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange

        return CamMultImageConfidenceChange()
    if name == "road":
        from pytorch_grad_cam.metrics.road import ROADCombined

        return ROADCombined(percentiles=[20, 40, 60, 80])
    return None


@contextmanager
def _cam(cam_cls, method: str, net, model, batch_size: int):
    """A pytorch-grad-cam object on the model's target layers; its hooks are released (and
    ScoreCAM's per-image progress bars restored) on exit."""
    cam = cam_cls(model=net, target_layers=model.target_layers(), reshape_transform=model.reshape_transform())
    quiet = None
    if method == "scorecam":
        cam.batch_size = batch_size
        import types

        import pytorch_grad_cam.score_cam as _sc  # silence its per-image tqdm bars

        quiet = (_sc, _sc.tqdm)
        _sc.tqdm = types.SimpleNamespace(tqdm=lambda it, *a, **k: it)
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()
        if quiet is not None:
            quiet[0].tqdm = quiet[1]


def _explain_batch(cam, x, net, tgt, metric):
    """One preprocessed batch -> (CAM maps (n, S, S) in [0, 1] of the classes ``tgt``,
    faithfulness per cell or None)."""
    from pytorch_grad_cam.utils.model_targets import (
        ClassifierOutputSoftmaxTarget,
        ClassifierOutputTarget,
    )

    grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in tgt])
    faith = None
    if metric is not None:
        soft = [ClassifierOutputSoftmaxTarget(int(t)) for t in tgt]
        faith = np.asarray(metric(x, grayscale, soft, net), dtype=np.float32).reshape(-1)
    return grayscale, faith


def explain(
    images,
    model=None,
    *,
    method: str = "gradcam",
    target=None,
    top_k: int = 5,
    batch_size: int = 16,
    device="auto",
    faithfulness: str | None = "confidence",
    progress=None,
    tta=None,
) -> BMResult:
    """Classify cells and compute one CAM heatmap per cell.

    The probabilities are those of :func:`classify_cells` (the recipe's test-time views, or
    ``tta``), so the widget shows what ``classify_cells`` and ``evaluate bm`` compute; the
    heatmap is computed on the cell as it is.
    ``target``: None (each cell's predicted class), a class index, or a class name/code
    (the same class for every cell). Heatmaps are resized to each cell's own size.
    """
    import torch

    from .._device import resolve_device
    from ..models.bm import load_bm_model

    if faithfulness not in FAITHFULNESS_METRICS:
        raise ValueError(f"faithfulness must be one of {FAITHFULNESS_METRICS}")
    cam_cls, method = _cam_class(method)
    model = load_bm_model(model)
    chosen = _resolve_target(target, model)
    cells = [_shape_cell(c) for c in as_cell_list(images)]
    shapes = [tuple(int(s) for s in c.shape[:2]) for c in cells]
    dev = resolve_device(device)
    net = model.module.to(dev).eval()
    for p in net.parameters():
        p.requires_grad_(True)
    n = len(cells)
    bs = max(1, int(batch_size))
    probs = classify_cells(cells, model, batch_size=bs, device=device, tta=tta).probabilities
    targets = probs.argmax(1) if chosen is None else np.full(n, chosen)
    heatmaps, faith = [], []
    metric = _faithfulness_metric(faithfulness)
    report(progress, "explain", 0, n)
    with torch.enable_grad(), torch.inference_mode(False), _cam(cam_cls, method, net, model, bs) as cam:
        for start in range(0, n, bs):
            batch = cells[start : start + bs]
            windows: list = []
            x = preprocess(batch, model, boxes=windows).to(dev)
            grayscale, f = _explain_batch(cam, x, net, targets[start : start + bs], metric)
            if f is not None:
                faith.append(f)
            g = torch.from_numpy(np.ascontiguousarray(grayscale, dtype=np.float32))[:, None]
            for j, shp in enumerate(shapes[start : start + bs]):
                heatmaps.append(_heatmap_on_cell(g[j : j + 1], shp, windows[j]))
            report(progress, "explain", min(start + bs, n), n)
    return _result(
        model,
        probs,
        top_k,
        targets,
        shapes,
        heatmaps=heatmaps,
        faithfulness=np.concatenate(faith) if faith else None,
        method=method,
        faithfulness_metric=faithfulness if faith else None,
    )
