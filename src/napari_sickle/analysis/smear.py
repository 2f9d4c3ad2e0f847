"""Analyse an RBC smear: detect regions, classify each into the six types, call abnormal.

``analyze_smear(image, models)`` -> :class:`SmearResult` (plain dataclass, no napari).

SCD screening rule (``summary["scd_call"]``, the reason in ``summary["scd_reason"]``):

* ``"inconclusive"`` when fewer than ``SCD_MIN_REGIONS`` (20) regions were found, or when the
  smear's type calls are uncertain (``summary["type_uncertainty"]`` above
  ``TYPE_UNCERTAINTY_MAX``: the classifier does not know images like this one, see
  :func:`type_uncertainty`), or were uncertain on the image as it is and were read with its
  cell lightness matched to the training smears (``summary["lightness_matched"]``,
  :func:`classify_regions`);
* ``"positive"`` when at least ``SCD_MIN_SICKLE`` (3) regions are labelled Elongated/Sickle with
  probability at least ``SCD_MIN_PROB`` (0.9) *and* they make up at least ``SCD_MIN_FRACTION``
  (5%) of all regions;
* ``"negative"`` otherwise.

This is a screening aid for the user's review of the flagged regions, not a diagnosis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..constants import RBC_TYPE_LABELS, RBC_TYPES

SCD_MIN_REGIONS = 20
SCD_MIN_SICKLE = 3
SCD_MIN_FRACTION = 0.05
#: only Elongated/Sickle calls this sure count towards a positive SCD call
SCD_MIN_PROB = 0.9
#: above this type uncertainty (see :func:`type_uncertainty`) a smear gets no SCD call
TYPE_UNCERTAINTY_MAX = 0.5
SCD_RULE = (
    f"positive if >= {SCD_MIN_SICKLE} regions and >= {SCD_MIN_FRACTION:.0%} of regions are Elongated/Sickle "
    f"with probability >= {SCD_MIN_PROB}; inconclusive if fewer than {SCD_MIN_REGIONS} regions, type "
    f"uncertainty above {TYPE_UNCERTAINTY_MAX} or cell lightness matched; otherwise negative"
)
#: Images smaller than this (either side) hold no cell: empty result.
MIN_IMAGE_SIDE = 16
#: Cells must be at least this much darker (0-255 gray) than the background to count as cells.
MIN_CONTRAST = 12.0
#: a region's pale cell centres are filled across rim gaps up to about twice this share of its box's short side
PALLOR_GAP = 0.1
#: Detections whose box holds less than this fraction of cell pixels are dropped (an empty field
#: has none). Small: Otsu's threshold misses pale red cells in smears with dark white cells, and
#: 5% dropped 28 true BCCD cells in 87 photographs (docs/models.md).
MIN_BOX_FOREGROUND = 0.005


@dataclass
class SmearResult:
    boxes: np.ndarray  # (N, 4) float32 x_min, y_min, x_max, y_max (pixels, max exclusive)
    scores: np.ndarray  # (N,)
    probs: np.ndarray  # (N, 6) per-type probabilities, order RBC_TYPES
    labels: np.ndarray  # (N, 6) 0/1 at type_threshold
    p_abnormal: np.ndarray  # (N,)
    abnormal: np.ndarray  # (N,) bool
    region_masks: np.ndarray  # (H, W) int32; row i -> id i + 1; 0 = no region
    summary: dict = field(default_factory=dict)
    image_shape: tuple = ()
    image_name: str = ""
    type_threshold: float = 0.5
    timings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.boxes))

    @property
    def type_names(self) -> list[str]:
        """'+'-joined display names of each region's predicted types ('none' when none)."""
        return [
            "+".join(RBC_TYPE_LABELS[t] for t, on in zip(RBC_TYPES, row) if on) or "none"
            for row in np.asarray(self.labels)
        ]

    def to_dataframe(self, image: str | None = None) -> pd.DataFrame:
        """One row per region in the regions CSV schema (io/formats.py)."""
        n = len(self)
        b = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        df = pd.DataFrame(
            {
                "image": [image if image is not None else self.image_name] * n,
                "region_id": np.arange(1, n + 1, dtype=np.int64),
                "x_min": np.floor(b[:, 0]).astype(np.int64),
                "y_min": np.floor(b[:, 1]).astype(np.int64),
                "x_max": np.ceil(b[:, 2]).astype(np.int64),
                "y_max": np.ceil(b[:, 3]).astype(np.int64),
            }
        )
        for j, t in enumerate(RBC_TYPES):
            df[t] = np.asarray(self.labels, dtype=np.int64).reshape(-1, 6)[:, j] if n else np.zeros(0, np.int64)
        df["score"] = np.asarray(self.scores, dtype=np.float64)
        for j, t in enumerate(RBC_TYPES):
            df[f"p_{t}"] = np.asarray(self.probs, dtype=np.float64).reshape(-1, 6)[:, j] if n else np.zeros(0)
        df["abnormal"] = np.asarray(self.abnormal, dtype=np.int64)
        df["p_abnormal"] = np.asarray(self.p_abnormal, dtype=np.float64)
        df["label"] = self.type_names
        return df


def type_uncertainty(probs) -> float:
    """How far a smear's type calls are from certain: per region the sum over the six types of
    ``min(p, 1 - p)``, averaged over the regions (0: every call certain; 3: every probability
    0.5). Low on smears like the training images; high on another lab's camera and on smears
    full of cells with none of the six types (target cells, spherocytes), where the types are
    unreliable (figures per source: docs/analysis.md)."""
    p = np.asarray(probs, np.float64).reshape(-1, len(RBC_TYPES))
    return float(np.minimum(p, 1.0 - p).sum(1).mean()) if len(p) else 0.0


def summarize(probs, abnormal, type_threshold: float = 0.5, lightness_matched: bool = False) -> dict:
    """Counts per type (labels at ``type_threshold``), abnormal count and fraction, the type
    uncertainty and the SCD screening call (module docstring) of regions with six-type
    probabilities ``probs`` (``lightness_matched``: read on the lightness-matched smear,
    :func:`classify_regions`)."""
    probs = np.asarray(probs, np.float64).reshape(-1, len(RBC_TYPES))
    labels = probs >= type_threshold
    n = int(len(labels))
    counts = {t: int(labels[:, j].sum()) for j, t in enumerate(RBC_TYPES)}
    n_abn = int(np.asarray(abnormal).sum())
    j = RBC_TYPES.index("elongated_sickle")
    n_sure = int((labels[:, j] & (probs[:, j] >= SCD_MIN_PROB)).sum())
    unc = type_uncertainty(probs)
    if n < SCD_MIN_REGIONS:
        call, why = "inconclusive", f"fewer than {SCD_MIN_REGIONS} regions"
    elif unc > TYPE_UNCERTAINTY_MAX:
        call = "inconclusive"
        why = f"type calls uncertain ({unc:.2f} > {TYPE_UNCERTAINTY_MAX}): cells unlike the classifier's training data"
    elif lightness_matched:
        call, why = "inconclusive", "type calls uncertain on the image as it is; read with its cell lightness matched"
    elif n_sure >= SCD_MIN_SICKLE and n_sure >= SCD_MIN_FRACTION * n:
        call, why = "positive", f"{n_sure} of {n} regions ({n_sure / n:.0%}) surely Elongated/Sickle"
    else:
        call, why = "negative", f"{n_sure} of {n} regions ({n_sure / n:.0%}) surely Elongated/Sickle"
    return {
        "n_regions": n,
        "counts": counts,
        "n_abnormal": n_abn,
        "abnormal_fraction": float(n_abn / n) if n else 0.0,
        "sickle_fraction": float(counts["elongated_sickle"] / n) if n else 0.0,
        "type_uncertainty": unc,
        "types_uncertain": bool(n and unc > TYPE_UNCERTAINTY_MAX),
        "lightness_matched": bool(lightness_matched),
        "scd_call": call,
        "scd_reason": why,
        "scd_rule": SCD_RULE,
    }


def foreground_mask(rgb: np.ndarray) -> np.ndarray:
    """Cell pixels of a brightfield smear: darker than the background (Otsu on 1 - gray,
    with holes filled so pale cell centres count)."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    gray = rgb.astype(np.float32).mean(axis=2)
    if gray.max() - gray.min() < 1e-3:
        return np.zeros(gray.shape, bool)
    small = gray[::4, ::4] if gray.size > 1_000_000 else gray
    t = threshold_otsu(small)
    dark, light = small[small < t], small[small >= t]
    if len(dark) == 0 or len(light) == 0 or float(light.mean() - dark.mean()) < MIN_CONTRAST:
        return np.zeros(gray.shape, bool)  # no two populations: background only
    fg = gray < t
    fg = ndi.binary_opening(fg, iterations=1)
    return fg


def box_foreground_fraction(fg: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Fraction of cell pixels inside each box (summed-area table)."""
    h, w = fg.shape
    sat = np.zeros((h + 1, w + 1), np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(fg, axis=0), axis=1)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0 = np.clip(np.floor(b[:, 0]), 0, w).astype(int)
    y0 = np.clip(np.floor(b[:, 1]), 0, h).astype(int)
    x1 = np.clip(np.ceil(b[:, 2]), 0, w).astype(int)
    y1 = np.clip(np.ceil(b[:, 3]), 0, h).astype(int)
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return (sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]) / area


def merge_by_connected_region(fg: np.ndarray, boxes: np.ndarray, scores: np.ndarray):
    """One box per connected region of cell pixels, as in the paper's training boxes.

    Each detection is assigned the connected foreground component holding most of the cell
    pixels in its box; detections sharing a component become one region whose box is the
    component's bounding box (score: the best of them). Returns (boxes, scores)."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(fg)
    if n == 0 or len(boxes) == 0:
        return boxes, scores
    objs = ndi.find_objects(lab)
    h, w = fg.shape
    best: dict[int, float] = {}
    for (x0, y0, x1, y1), sc in zip(np.asarray(boxes, dtype=np.float64), scores):
        xa, ya = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        xb, yb = min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h)
        sub = lab[ya:yb, xa:xb]
        ids, counts = np.unique(sub[sub > 0], return_counts=True)
        if len(ids) == 0:
            continue
        k = int(ids[np.argmax(counts)])
        best[k] = max(best.get(k, 0.0), float(sc))
    ks = sorted(best, key=lambda k: -best[k])
    out = np.array(
        [[objs[k - 1][1].start, objs[k - 1][0].start, objs[k - 1][1].stop, objs[k - 1][0].stop] for k in ks],
        dtype=np.float32,
    ).reshape(-1, 4)
    return out, np.array([best[k] for k in ks], dtype=np.float32)


def region_masks_from_boxes(fg: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(H, W) int32: the cell pixels inside each box, id = row + 1; where boxes overlap the
    higher-scoring region wins. Pale cell centres are included (:func:`fill_pallor`)."""
    h, w = fg.shape
    out = np.zeros((h, w), np.int32)
    order = np.argsort(-np.asarray(scores), kind="stable")
    for i in order:
        x0, y0, x1, y1 = np.asarray(boxes[i], dtype=np.float64)
        x0, y0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        x1, y1 = min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h)
        if x1 <= x0 or y1 <= y0:
            continue
        sub = fill_pallor(fg[y0:y1, x0:x1], PALLOR_GAP * min(x1 - x0, y1 - y0))
        view = out[y0:y1, x0:x1]
        view[(view == 0) & sub] = i + 1
    return out


def fill_pallor(mask: np.ndarray, gap: float) -> np.ndarray:
    """``mask`` with its holes filled, also holes whose rim is broken by gaps of up to about
    ``2 * gap`` px: a pale cell centre often reaches the background through a faint part of
    the rim, and Otsu's threshold then leaves a notch instead of a hole. Only what closes such
    a hole is added (a closing by a disk of radius ``gap`` finds it); outer concavities, e.g.
    of a sickle cell, stay as they are."""
    from scipy import ndimage as ndi

    filled = ndi.binary_fill_holes(mask)
    r = float(gap)
    if r < 1 or not mask.any():
        return filled
    pad = int(np.ceil(r)) + 1
    m = np.pad(mask, pad)
    closed = ndi.distance_transform_edt(ndi.distance_transform_edt(~m) <= r) > r  # closing, disk r
    closed = closed[pad:-pad, pad:-pad]
    closed_filled = ndi.binary_fill_holes(closed)
    holes = closed_filled & ~closed
    if not holes.any():
        return filled
    lab, _ = ndi.label(closed_filled & ~mask)
    ids = np.unique(lab[holes])
    return filled | np.isin(lab, ids[ids > 0])


def _empty(shape, name, thr, timings=None) -> SmearResult:
    h, w = (shape[0], shape[1]) if len(shape) >= 2 else (0, 0)
    z = np.zeros((0,), np.float32)
    return SmearResult(
        np.zeros((0, 4), np.float32),
        z,
        np.zeros((0, 6), np.float32),
        np.zeros((0, 6), np.int64),
        z.copy(),
        np.zeros(0, bool),
        np.zeros((h, w), np.int32),
        summarize(np.zeros((0, 6)), []),
        (h, w),
        name,
        thr,
        timings or {},
    )


def prepare_image(image) -> np.ndarray | None:
    """The RGB uint8 image ``analyze_smear`` works on (gray, RGB(A), channels-first, any dtype),
    or None when it is smaller than ``MIN_IMAGE_SIDE`` (no cell can be found: empty result)."""
    from ..io.images import to_rgb_uint8

    arr = _oriented(image)
    if min(arr.shape[:2]) < MIN_IMAGE_SIDE:
        return None
    return to_rgb_uint8(arr)


def _oriented(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channels-first
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"analyze_smear needs a 2-D gray or RGB(A) image, got shape {arr.shape}")
    return arr


def place_models(models, device="auto") -> None:
    """Move the detector and classifier to ``device`` (``"auto"``: keep them where they are if
    already placed); detection stays on the CPU on MPS (:func:`napari_sickle._device.detection_device`)."""
    detector, classifier = models.detector, models.classifier
    if device != "auto" or detector.device is None:
        from .._device import detection_device, resolve_device

        dev = resolve_device(device)
        classifier.to(dev)
        detector.to(detection_device(dev))


def detect_regions(
    rgb: np.ndarray,
    detector,
    *,
    score_threshold: float = 0.5,
    nms_iou: float = 0.5,
    merge_regions: bool = True,
    fg: np.ndarray | None = None,
    progress=None,
    cell_diameter: float | None = None,
):
    """Region boxes of an RGB uint8 smear -> (boxes (N, 4) float32, scores (N,), foreground mask).

    Detections of a multi-class detector are limited to red cells; degenerate boxes and boxes
    with (almost) no cell pixels are dropped; with ``merge_regions`` detections on one connected
    region of cell pixels become that region's bounding box. ``fg``: a precomputed
    :func:`foreground_mask` of ``rgb`` (the batch command computes it in its reader workers).
    ``cell_diameter``: the smear's red cell diameter in pixels, for a detector trained at a cell
    diameter (``config["cell_diameter"]``): the image is resized so its cells have the training
    diameter before detection (None: estimated from the image, ``models.scale``)."""
    extra = {} if cell_diameter is None else {"cell_diameter": float(cell_diameter)}
    boxes, scores, cls = detector.detect(
        rgb,
        score_threshold=score_threshold,
        nms_iou=nms_iou,
        progress=progress,
        region_merge=None if merge_regions else False,
        **extra,
    )
    names = detector.class_names
    if len(names) > 1:  # a multi-class (e.g. VOC RBC/WBC/Platelets) detector: keep the red cells
        keep_ids = [i + 1 for i, n in enumerate(names) if n.lower() in ("rbc", "cell region", "red blood cell")]
        if keep_ids:
            m = np.isin(cls, keep_ids)
            boxes, scores = boxes[m], scores[m]
    # drop degenerate boxes and boxes without cell pixels (e.g. on an empty field)
    if fg is None:
        fg = foreground_mask(rgb)
    ok = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
    if len(boxes):
        ok &= box_foreground_fraction(fg, boxes) >= MIN_BOX_FOREGROUND
    boxes, scores = boxes[ok], scores[ok]
    if merge_regions and len(boxes) and detector.config.get("region_merge") is None:
        # (a detector with its own region_merge setting merged, or not, in detect(); False: its
        # boxes are regions already, e.g. one trained on real smears' region boxes)
        boxes, scores = merge_by_connected_region(fg, boxes, scores)
    return boxes, scores, fg


def classify_regions(rgb, boxes, classifier, *, batch_size: int = 64, progress=None):
    """Six-type probabilities of the region ``boxes`` of an RGB uint8 smear, and whether they
    were read with the smear's cell lightness matched to the classifier's training smears.

    A smear whose calls are uncertain (:func:`type_uncertainty` above ``TYPE_UNCERTAINTY_MAX``:
    another camera renders cells paler or with more contrast) is read again with
    ``models.stain.match_lightness`` when the classifier carries a ``stain_reference``, and the
    surer of the two readings is kept. Smears like the training ones are read once."""
    probs = classifier.predict_boxes(rgb, boxes, batch_size=batch_size, progress=progress)
    ref = getattr(classifier, "config", {}).get("stain_reference")
    if ref is None or len(probs) == 0 or type_uncertainty(probs) <= TYPE_UNCERTAINTY_MAX:
        return probs, False
    from ..models.stain import match_lightness

    again = None
    if progress is not None:

        def again(stage, done, total):
            progress("classify (cell lightness matched)", done, total)

        again("classify", 0, len(boxes))  # a Cancel point before the second reading
    matched = match_lightness(rgb, ref)
    if matched is None:
        return probs, False
    probs2 = classifier.predict_boxes(matched, boxes, batch_size=batch_size, progress=again)
    if type_uncertainty(probs2) < type_uncertainty(probs):
        return probs2, True
    return probs, False


def finish_result(
    rgb_shape,
    boxes,
    scores,
    probs,
    classifier,
    *,
    type_threshold: float = 0.5,
    masks=None,
    image_name: str = "",
    timings=None,
    lightness_matched: bool = False,
) -> SmearResult:
    """SmearResult from region boxes and their six-type probabilities (labels at
    ``type_threshold``, abnormal probability from the classifier's abnormal model, summary;
    ``lightness_matched``: the probabilities were read on the lightness-matched smear)."""
    labels = (probs >= type_threshold).astype(np.int64)
    p_abn = classifier.abnormal_proba(probs)
    abnormal = p_abn >= 0.5
    if masks is None:
        masks = np.zeros(tuple(rgb_shape[:2]), np.int32)
    return SmearResult(
        np.asarray(boxes).astype(np.float32),
        np.asarray(scores).astype(np.float32),
        np.asarray(probs).astype(np.float32),
        labels,
        p_abn.astype(np.float32),
        abnormal,
        masks,
        summarize(probs, abnormal, type_threshold, lightness_matched),
        tuple(rgb_shape[:2]),
        image_name,
        float(type_threshold),
        dict(timings or {}),
    )


# long because its docstring documents every option and stage; the body is the five stages in order
def analyze_smear(
    image,
    models,
    *,
    score_threshold: float = 0.5,
    nms_iou: float = 0.5,
    type_threshold: float = 0.5,
    batch_size: int = 64,
    device="auto",
    progress=None,
    image_name: str = "",
    region_masks: bool = True,
    merge_regions: bool = True,
    cell_diameter: float | None = None,
) -> SmearResult:
    """Detect, classify and call abnormal on one smear.

    image: (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA, any dtype (16-bit and float are rescaled).
    models: an object with ``.detector`` (models.detector.RegionDetector) and ``.classifier``
    (models.multilabel.RBCClassifier), e.g. from ``models.registry``. ``device`` moves them
    there (``"auto"``: keep them where they are if already placed, else resolve).
    Progress stages: "detect", "classify" (and "classify (cell lightness matched)" for a smear
    read twice, :func:`classify_regions`), "abnormal". An image with no cell, or smaller than
    16 px, gives an empty result. Detections whose box holds (almost) no cell pixels - pixels
    darker than the background by Otsu's threshold - are dropped. With ``merge_regions``
    (default) detections that fall on the same connected region of cell pixels are merged into
    one region box (the region's bounding box): a region is a connected group of cells, as in
    the paper's ground truth. A detector whose checkpoint carries its own ``region_merge``
    setting (models.detector) does this itself, with the same setting as ``evaluate``; with
    ``region_merge: False`` (detectors trained on real smears, which learned the regions) its
    boxes are kept as they are.
    ``cell_diameter``: optional override of the red cell diameter in pixels (see
    :func:`detect_regions`; by default it is estimated from the image).

    The stages are also public (:func:`prepare_image`, :func:`detect_regions`,
    :func:`classify_regions`, :func:`finish_result`) for ``analysis.batch``, which classifies the regions of several
    smears in one batch.
    """
    import time

    timings = {}
    t0 = time.perf_counter()
    rgb = prepare_image(image)
    if rgb is None:
        return _empty(_oriented(image).shape, image_name, type_threshold, timings)
    place_models(models, device)
    classifier = models.classifier
    if progress is not None:
        progress("detect", 0, 1)
    boxes, scores, fg = detect_regions(
        rgb,
        models.detector,
        score_threshold=score_threshold,
        nms_iou=nms_iou,
        merge_regions=merge_regions,
        progress=progress,
        cell_diameter=cell_diameter,
    )
    timings["detect"] = time.perf_counter() - t0
    if progress is not None:
        progress("detect", 1, 1)
    if len(boxes) == 0:
        return _empty(rgb.shape, image_name, type_threshold, timings)
    t1 = time.perf_counter()
    if progress is not None:
        progress("classify", 0, len(boxes))
    probs, matched = classify_regions(rgb, boxes, classifier, batch_size=batch_size, progress=progress)
    timings["classify"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    if progress is not None:
        progress("abnormal", 0, 1)
    masks = region_masks_from_boxes(fg, boxes, scores) if region_masks else None
    res = finish_result(
        rgb.shape,
        boxes,
        scores,
        probs,
        classifier,
        type_threshold=type_threshold,
        masks=masks,
        image_name=image_name,
        lightness_matched=matched,
    )
    timings["abnormal_and_masks"] = time.perf_counter() - t2
    if progress is not None:
        progress("abnormal", 1, 1)
    timings["total"] = time.perf_counter() - t0
    res.timings = timings
    return res
