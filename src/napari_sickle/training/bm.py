"""Train and evaluate the bone-marrow / white-cell classifier.

Recipe (``schedule="cosine"``, the default; docs/bm.md says why): every cell goes once through
the cell view of ``analysis.bm`` (white balance to the background, a window framed on the
stained nucleus and scaled by its area: ``normalise``, ``crop``, ``crop_factor``); SGD with
momentum 0.9 at a fixed lr (0.02 unless given), one epoch of linear warm-up and cosine decay to
zero; an exponential moving average of the weights (``ema``), whose value after the last epoch
is the model (nothing is chosen on validation cells); class-balanced ``WeightedRandomSampler``;
stain and colour augmentation (``colour``: :class:`StainJitter`), rotation with a random zoom
(``scale_jitter``) and flips; background erasing from cell masks stored beside the images
(``bg_erase``); efficientnet-lite0 at output stride 16 (``output_stride``).
``schedule="plateau"`` is the earlier recipe (Glüge et al. 2024): lr range test,
``ReduceLROnPlateau`` on the validation loss, ``best.pt`` = the best validation epoch,
``RandomResizedCrop`` (``crop_scale``), optional head warm-up (``warmup_epochs``).

``data`` layouts:

* class folders of single-cell crops (class = sub-folder name; grey label masks beside their
  images are not taken for cells);
* a CSV table (or a folder holding ``labels.csv``) with an image column (``image`` or
  ``path``) and a class column (``class_name``, ``label`` or ``class``); relative paths
  are resolved against the CSV's folder (the ``wbc-zheng2018`` layout);
* the Zheng 2018 folder as published (``Class Labels of Dataset N.csv`` + ``Dataset N/``);
* ``"simulated"``: :func:`napari_sickle.data.bm_sim.simulate_bm_cells`.

Other options (:class:`~napari_sickle.training.recipes.BMRecipe` fields): ``input_size`` (default: the median crop side rounded down to
a multiple of 32, at most the arch's default), ``batch_size`` (32), ``lr``, ``augment``
(True), ``val_fraction`` (0.2; 0 trains on everything, cosine schedule only), ``split_seed``
(0: the held-out split does not change with ``seed``), ``n_per_class`` (simulated, 64),
``pretrained`` (True), ``weight_decay`` (1e-4), ``label_smoothing`` (0), ``class_names``,
``cache_size``, ``tta`` (``"d4"``: validation, ``evaluate_bm`` and ``classify_cells`` average
the softmax of each cell in the eight symmetries of the square; ``"flips"``; ``"none"``). ``epochs`` defaults to 30. Validation cells go
through ``analysis.bm.preprocess``, the code ``classify_cells`` uses, so the logged held-out
figures equal ``evaluate bm``'s.

With ``folds=k`` one model per fold is trained in ``out/fold<i>/``; metrics are computed
on the pooled out-of-fold predictions, and ``out/best.pt`` is the fold model with the
best held-out macro-F1. ``resume`` continues a single-split run from its ``last.pt``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from ..models.bm import TTA_MODES, tta_mode, tta_views  # noqa: F401  (re-exported)
from .bm_data import (  # noqa: F401 - re-exported: importable from this module too
    CLASS_COLUMNS,
    IMAGE_COLUMNS,
    ZHENG_CLASSES,
    StainJitter,
    _canonical,
    _CellDataset,
    _drop_masks,
    _is_label_mask,
    _read_rgb,
    _shrink,
    _table_from_csv,
    _table_from_published_zheng,
    _transforms,
    _ValDataset,
    channel_stats,
    find_masks,
    load_bm_data,
)
from .bm_fit import _HEAD_NAMES, _evaluate_loader, _fit, _metrics, family_of, lr_range_test  # noqa: F401
from .recipes import BMRecipe

DEFAULT_ARCH = "efficientnet_lite0"


def train_bm(
    data,
    out,
    recipe: BMRecipe | None = None,
    *,
    device="auto",
    resume=None,
    folds=None,
    progress=None,
    log=None,
    **options,
) -> dict:
    """Train a BM classifier; see the module docstring. ``recipe``: a
    :class:`~napari_sickle.training.recipes.BMRecipe`; keyword ``options`` (its field names)
    override it, unknown ones are refused. Returns checkpoint, metrics, history, seconds."""
    t0 = time.perf_counter()
    recipe = BMRecipe.build(recipe, options)
    simulated = isinstance(data, str) and data == "simulated"
    auto_size = recipe.sizes_from_crops(simulated)
    r = recipe.resolved(simulated)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if resume is not None and not Path(resume).is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint file.")
    if resume is not None and folds:
        raise ValueError("--resume continues a single-split run; it cannot be combined with --folds.")
    cells = _load(data, r, auto_size)
    r = cells.recipe
    common = dict(recipe=r, device=device, progress=progress, log=log, data_desc=str(data))
    if folds:
        metrics, history = _fit_folds(cells, out, int(folds), log=log, common=common)
        heldout = {}
    else:
        metrics, history, heldout = _fit_split(cells, out, resume=resume, common=common)
    metrics["skipped"] = int(cells.skipped)
    return {
        "checkpoint": str(out / "best.pt"),
        "metrics": metrics,
        "history": history,
        "seconds": time.perf_counter() - t0,
        **heldout,
    }


def _load(data, r: BMRecipe, auto_size: bool):
    """The cells (resized once to ``cache_size`` when given), their class indices, paths and
    masks, and the recipe with the input size taken from the crops when ``auto_size``."""
    from types import SimpleNamespace

    images, labels, names, skipped, paths = load_bm_data(
        data, input_size=int(r.input_size), n_per_class=int(r.n_per_class), seed=r.seed, return_paths=True
    )
    images = _shrink(images, r.cache_size)
    masks = find_masks(paths) if float(r.bg_erase) > 0 and not r.cache_size else [None] * len(paths)
    n_masks = sum(m is not None for m in masks)
    if n_masks == 0:
        masks = None
    if auto_size:
        # The median crop side rounded down to the network stride (32): crops are not
        # upsampled, which costs compute and adds no detail (120 px WBC crops -> 96).
        side = int(np.median([max(im.shape[:2]) for im in images]))
        r = r.replace(input_size=int(min(r.input_size, max(32, side // 32 * 32))))
    if r.class_names:
        extra = sorted(set(labels) - set(r.class_names))
        if extra:
            raise ValueError(f"classes {extra} in the data are not in class_names")
        names = tuple(r.class_names)
    y = np.array([names.index(lab) for lab in labels])
    return SimpleNamespace(
        recipe=r, images=images, y=y, names=names, skipped=skipped, paths=paths, masks=masks, n_masks=n_masks
    )


def _subset(cells, idx):
    return [cells.images[j] for j in idx], None if cells.masks is None else [cells.masks[j] for j in idx]


def _fit_split(cells, out: Path, *, resume, common: dict):
    """One model on a stratified train/validation split (by ``split_seed``); (metrics,
    history, held-out paths and probabilities)."""
    from sklearn.model_selection import train_test_split

    r, y = cells.recipe, cells.y
    idx = np.arange(len(y))
    if float(r.val_fraction) > 0:
        # the split depends on split_seed only, so runs with different training seeds are
        # scored on the same held-out cells
        tr, va = train_test_split(idx, test_size=float(r.val_fraction), stratify=y, random_state=int(r.split_seed))
    elif r.schedule == "cosine":  # train on everything; nothing held out
        tr, va = idx, idx[:0]
    else:
        raise ValueError("val_fraction=0 needs schedule='cosine' (the plateau schedule selects on validation).")
    val_paths = [cells.paths[j] for j in va]
    train_imgs, train_masks = _subset(cells, tr)
    res = _fit(
        train_imgs,
        y[tr],
        [cells.images[j] for j in va],
        y[va],
        cells.names,
        out,
        train_masks=train_masks,
        resume=resume,
        record={"n_masks": cells.n_masks, "val_paths": val_paths},
        **common,
    )
    metrics = _metrics(y[va], res["val_proba"].argmax(1), cells.names) if len(va) else {"n": 0}
    return metrics, res["history"], {"val_paths": val_paths, "val_proba": res["val_proba"]}


def _fit_folds(cells, out: Path, k: int, *, log, common: dict):
    """One model per stratified fold in ``out/fold<i>/``; (metrics of the pooled out-of-fold
    predictions, history). ``out/best.pt`` is the fold model with the best macro-F1."""
    from sklearn.model_selection import StratifiedKFold

    from . import distributed as ddp_glue

    r, y, names = cells.recipe, cells.y, cells.names
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=r.seed)
    oof = np.zeros((len(y), len(names)))
    fold_best, history = [], []
    for i, (tr, va) in enumerate(skf.split(np.zeros(len(y)), y)):
        if log:
            log({"event": "fold", "fold": i + 1, "folds": k})
        train_imgs, train_masks = _subset(cells, tr)
        res = _fit(
            train_imgs,
            y[tr],
            [cells.images[j] for j in va],
            y[va],
            names,
            out / f"fold{i + 1}",
            train_masks=train_masks,
            resume=None,
            stage=f"fold {i + 1}/{k}",
            record={"n_masks": cells.n_masks},
            **common,
        )
        oof[va] = res["val_proba"]
        fold_best.append(res["best_metric"])
        history += [dict(h, fold=i + 1) for h in res["history"]]
    metrics = _metrics(y, oof.argmax(1), names)
    metrics["folds"] = k
    metrics["fold_macro_f1"] = [float(f) for f in fold_best]
    best_fold = int(np.argmax(fold_best)) + 1
    if ddp_glue.is_main():  # rank 0 wrote the fold checkpoints
        shutil.copyfile(out / f"fold{best_fold}" / "best.pt", out / "best.pt")
        shutil.copyfile(out / f"fold{best_fold}" / "last.pt", out / "last.pt")
    metrics["checkpoint_fold"] = best_fold
    return metrics, history


def evaluate_bm(
    model,
    data,
    device="auto",
    *,
    batch_size: int = 32,
    progress=None,
    split: str = "all",
    tta=None,
    predictions: bool = False,
) -> dict:
    """Macro/per-class precision, recall, F1 and accuracy of ``model`` on ``data``.

    ``split="heldout"`` keeps only the images that the checkpoint's training run held out
    for validation (the ``val_paths`` stored in its recipe), so the figure is not computed
    on training images; ``"all"`` (default) uses every image of ``data``.
    ``tta``: None uses the checkpoint's own setting (recipe ``tta``, as its training
    validation did); ``"flips"`` averages the softmax of the cell and its three flips,
    ``"none"`` classifies the cell as it is. ``predictions=True`` adds ``"predictions"``: one
    ``{"path", "label", "predicted"}`` per image (to pool several test sets)."""
    from ..analysis.bm import classify_cells
    from ..models.bm import load_bm_model

    clf = load_bm_model(model)
    images, labels, _, skipped, paths = load_bm_data(
        data, input_size=clf.input_size, return_paths=True, min_per_class=1
    )
    if split not in ("all", "heldout"):
        raise ValueError(f"split must be 'all' or 'heldout', not {split!r}")
    if split == "heldout":
        keep = set((getattr(clf, "recipe", None) or {}).get("val_paths") or [])
        if not keep:
            raise ValueError(
                f"{model}: its recipe lists no held-out images (trained with --folds or an older "
                "version); use split='all' on separate test data."
            )
        sel = [i for i, pth in enumerate(paths) if pth in keep]
        if not sel:
            raise ValueError(f"none of the checkpoint's {len(keep)} held-out images is in {data}.")
        images, labels, paths = [images[i] for i in sel], [labels[i] for i in sel], [paths[i] for i in sel]
    names = list(clf.class_names)
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise ValueError(f"the data has classes {unknown} that the model does not know ({names}).")
    res = classify_cells(images, clf, batch_size=batch_size, device=device, progress=progress, tta=tta)
    proba = res.probabilities
    mode = tta_mode((getattr(clf, "recipe", None) or {}).get("tta", "none") if tta is None else tta)
    y = np.array([names.index(lab) for lab in labels])
    m = _metrics(y, proba.argmax(1), names)
    m["tta"] = mode
    if predictions:
        m["predictions"] = [
            {"path": str(pth), "label": lab, "predicted": names[int(k)]}
            for pth, lab, k in zip(paths, labels, proba.argmax(1))
        ]
    if skipped:
        m["skipped"] = int(skipped)
    return m
