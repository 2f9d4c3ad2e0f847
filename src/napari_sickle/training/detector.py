"""Train and evaluate the Faster R-CNN region detector; AP50 as in Pascal VOC.

Data (``data``):

* ``"simulated"``: simulated smears; one box per connected region of the cell mask (the paper's
  boxes), class "cell region";
* an ``images/`` + ``masks/`` folder (or ``*_img``/``*_mask`` pairs): boxes from the connected
  regions of each binary mask (``io.masks.mask_to_regions``), class "cell region";
* ``"composed:<crop folder>"`` / ``"composed-test:<crop folder>"``: smears composed from real
  single-cell crops (e.g. sickle-rbc) of the training patients / of the held-out patient
  (:func:`split_crops`), so test smears never reuse a training crop;
* ``"real"`` / ``"real:<folder>"``: real smears from several public sources under the folder
  (default ``$SICKLE_DATA``; ``data.real_smears``): BCCD RBC boxes, BBBC041Seg mask regions,
  Chula RBC-12 boxes derived from its point labels; each source's own validation split
  (by image) validates. Every image carries its estimated cell diameter, and with
  ``cell_diameter`` (the training diameter, e.g. 30) each is resized so its cells have that
  diameter; the diameter is stored in the checkpoint and ``RegionDetector.detect`` resizes
  every input the same way. Sources are sampled equally often (``source_balance``; or a dict
  of relative shares per source, e.g. ``{"bccd": 2, "bbbc041seg": 1, "chula-rbc12": 1}``); the
  per-epoch metric is the mean of BCCD AP50, BBBC041 AP50 and the share of Chula points inside
  a box scoring >= 0.5;
* a Pascal VOC folder (``JPEGImages/`` + ``Annotations/``): its boxes and class names
  (degenerate boxes are dropped with a warning by ``io.formats.read_voc``); ``train.txt`` /
  ``val.txt`` give the split when present. ``classes=[...]`` keeps only those classes.

Recipe: images are resized by the detector's ``scale`` (CPU default 0.5), the network trains
on random ``crop_size`` crops (random flips, colour jitter), AdamW (lr 1e-4 by default), batch 2; validation AP50 on whole
images after every epoch; ``best.pt`` keeps the best AP50. With VOC ``train.txt``/``val.txt`` the
validation images are a ``val_fraction`` part of the train split (``validate_on="train"``, the
default), so ``val.txt`` stays an unseen test split; ``validate_on="val"`` validates on it.

Further options: ``rot90=True`` adds random transposes to the flips (all 8 rotations/reflections);
``ema`` (a decay, e.g. 0.99; 0 = off) validates and saves an exponential moving average of the
weights and BatchNorm statistics (``torch.optim.swa_utils.AveragedModel``; ``last.pt`` also keeps
the raw weights for ``--resume``); ``tta`` (``"flips"`` / ``"dihedral"``) stores test-time views
in the checkpoint (``models.detector.fuse_tta``), which ``evaluate`` and ``analyze_smear`` then
apply (per-epoch validation stays on the raw detections; the best epoch is validated once more
with the views at the end, ``metrics["val_tta"]``). Training-only options, recorded in the
recipe: ``scale_jitter`` (j: crops resized by a log-uniform factor in [1/(1+j), 1+j], or a
``[lo, hi]`` pair; off by default), ``min_visible`` (a box cut by the crop is kept when at least
this part of it is inside; 0.7), ``rpn_batch_size_per_image`` / ``rpn_positive_fraction`` /
``box_batch_size_per_image`` / ``box_positive_fraction`` (torchvision's proposal and RoI
samplers; None = the architecture's 256 / 0.5 / 128 / 0.25), ``color_aug`` (True: stain and
camera augmentation on top of the gain/brightness/contrast jitter: hue rotation, saturation,
gamma, grayscale 15% of crops, Gaussian blur 20%; off by default), ``val_limit`` (at most this
many validation images per source, for ``real`` data). The schedule is OneCycle (10% warm-up
to ``lr``, then cosine decay) over ``epochs`` x ``iters_per_epoch`` steps.

Options for composed smears: ``cluster_fraction`` (compose_smear's share of cells placed touching
another; training smears only) and ``region_merge`` (True or a dict of
``models.detector.REGION_MERGE_DEFAULTS`` keys): store the "one box per connected region"
post-processing in the checkpoint, so validation, ``evaluate`` and ``analyze_smear`` all apply it.
Leave it off for per-cell boxes (BCCD). A detector trained on ``real`` data (or with
``region_merge=False``) stores ``False``: ``analyze_smear`` then keeps its boxes as they are
instead of merging detections on one connected region of cell pixels (that merge joins whole
crowded fields of a real smear into one box; docs/models.md). ``evaluate_detector(..., region_merge=False)`` scores
the raw detections of such a model.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .detector_data import (  # noqa: F401 - re-exported: importable from this module too
    REGION_CLASS,
    _color_augment,
    _item_scale,
    _jitter_range,
    _random_crop,
    _scaled,
    _split_items,
    load_detection_data,
    patient_of,
    split_crops,
)
from .detector_metrics import _iou_one, ap50, average_precision, score_real  # noqa: F401
from .recipes import DetectorRecipe


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
def predict_items(
    det, items, batch_size=2, score_threshold=0.05, progress=None, stage="validate", region_merge=None, tta=None
):
    """Run a RegionDetector over items; returns per image (boxes, scores, labels).
    ``region_merge`` / ``tta``: None = the checkpoint's setting, False / "none" = off (see models.detector)."""
    out = []
    for k, it in enumerate(items):
        out.append(
            det.detect(
                it["image"],
                score_threshold=score_threshold,
                nms_iou=0.5,
                batch_size=batch_size,
                region_merge=region_merge,
                tta=tta,
            )
        )
        if progress is not None:
            progress(stage, k + 1, len(items))
    return out


def train_detector(
    data,
    out,
    recipe: DetectorRecipe | None = None,
    *,
    device="auto",
    resume=None,
    folds=None,
    progress=None,
    log=None,
    **options,
) -> dict:
    """Train a Faster R-CNN region detector (see module docstring).

    ``recipe``: a :class:`~napari_sickle.training.recipes.DetectorRecipe`; keyword ``options``
    (its field names, e.g. ``epochs=2, lr=3e-4``) override it, unknown ones are refused.
    ``backbone``: one of models.detector.ARCHS (default ``efficientnet-lite0-fpn``, whose
    ImageNet weights are available offline). ``scale``: input resize factor (default 0.5 for
    the CPU architectures, 1.0 for the ResNet ones). ``folds`` is not used for detectors.
    Returns {"checkpoint", "metrics", "history", "seconds"}.
    """
    from . import distributed as ddp_glue

    t0 = time.time()
    recipe = DetectorRecipe.build(recipe, options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    emit = log or (lambda d: None)
    run = _load(data, recipe, resume=resume, device=device, progress=progress, emit=emit)
    _setup(run, out)
    for epoch in range(run.start_epoch, run.recipe.epochs):
        loss = _train_one_epoch(run, epoch, emit=emit, progress=progress)
        metric, m = _validate(run)
        rec = {
            "event": "epoch",
            "epoch": epoch + 1,
            "epochs": run.recipe.epochs,
            "loss": ddp_glue.reduce_mean(loss, run.iters_per_epoch),
            "val_loss": None,
            "metric": metric,
            "metric_name": "val_ap50",
            "ap50_per_class": m["ap50_per_class"],
            **({"per_source": m["per_source"]} if run.by_source else {}),
        }
        run.history.append(rec)
        emit(rec)
        _save(run, out, epoch, metric, m)
    return _finish(run, out, t0, emit)


def _region_merge_setting(region_merge, real: bool):
    """The checkpoint's ``region_merge``: the foreground merge's settings when asked for (so
    evaluate and analyze_smear apply it too); False for real smears or when set False (the
    detector learns the regions itself, and analyze_smear keeps its boxes instead of merging
    them by connected cell pixels); else None (analyze_smear's own merge)."""
    if region_merge:
        from ..models.detector import REGION_MERGE_DEFAULTS

        return {**REGION_MERGE_DEFAULTS, **(region_merge if isinstance(region_merge, dict) else {})}
    return False if (region_merge is False or real) else None


def _load(data, recipe: DetectorRecipe, *, resume, device, progress, emit) -> SimpleNamespace:
    """Checks, data, train/validation split and the detector (new or from ``resume``); the
    training crops' source images prepared at the training scale."""
    import torch

    from .._device import detection_device, resolve_device
    from ..models.checkpoint import load_checkpoint
    from ..models.detector import RegionDetector, new_detector

    r = recipe.resolved()
    torch.manual_seed(r.seed)
    rng = np.random.default_rng(r.seed)
    det_dev = detection_device(resolve_device(device))
    tta = r.tta
    if tta is not None:  # a bad value fails before the data are read
        from ..models.detector import tta_mode

        tta = tta_mode(tta)
    jitter = _jitter_range(r.scale_jitter)
    resumed = None
    if resume is not None:
        if not Path(resume).is_file():
            raise FileNotFoundError(f"--resume: checkpoint {resume} does not exist")
        resumed = load_checkpoint(resume, kind="detector")
    tr_items, va_items, class_names, splits, by_source = _load_items(data, r, progress)
    if resumed is not None:
        det = RegionDetector.from_checkpoint(resumed, device=det_dev)
        r = r.replace(backbone=det.config["arch"], scale=float(det.config["scale"]))
    else:
        det = new_detector(r.backbone, class_names=class_names, scale=r.scale, pretrained=r.pretrained, device=det_dev)
        det.config["region_merge"] = _region_merge_setting(r.region_merge, by_source)
        if r.cell_diameter:  # stored: detect() resizes every image to this cell diameter
            det.config["cell_diameter"] = float(r.cell_diameter)
    if tta is not None:  # stored in the checkpoint: evaluate and analyze_smear apply it
        det.config["tta"] = tta
    scale = float(det.config["scale"])
    train_diameter = det.config.get("cell_diameter")
    prepared = [_scaled(it, _item_scale(it, scale, train_diameter)) for it in tr_items]
    weights = None
    if by_source and r.source_balance:  # each source equally often, whatever its number of images
        srcs = [it["source"] for it in tr_items]
        cnt = {k: srcs.count(k) for k in set(srcs)}
        share = (
            {k: float(r.source_balance.get(k, 0.0)) for k in cnt}
            if isinstance(r.source_balance, dict)
            else {k: 1.0 for k in cnt}
        )
        weights = np.array([share[k] / cnt[k] for k in srcs])
        weights /= weights.sum()
    n_boxes = int(sum(len(p[1]) for p in prepared))
    emit(
        {"event": "data", "n_train": len(tr_items), "n_val": len(va_items), "n_boxes": n_boxes, "classes": class_names}
    )
    iters_per_epoch = r.iters_per_epoch
    if iters_per_epoch is None:  # about one pass over the training pixels
        px = sum(p[0].shape[-1] * p[0].shape[-2] for p in prepared)
        iters_per_epoch = max(4, int(np.ceil(px / (r.crop_size * r.crop_size) / r.batch_size)))
    return SimpleNamespace(
        recipe=r,
        data=data,
        det=det,
        det_dev=det_dev,
        resumed=resumed,
        rng=rng,
        jitter=jitter,
        prepared=prepared,
        weights=weights,
        va_items=va_items,
        class_names=class_names,
        splits=splits,
        by_source=by_source,
        iters_per_epoch=int(iters_per_epoch),
        train_diameter=train_diameter,
    )


def _load_items(data, r: DetectorRecipe, progress):
    """(training items, validation items, class names, split list or None, by_source)."""
    compose_options = {} if r.cluster_fraction is None else {"cluster_fraction": float(r.cluster_fraction)}
    items, class_names, splits = load_detection_data(
        data,
        seed=r.seed,
        n_smears=r.n_smears,
        classes=r.classes,
        progress=progress,
        smear_shape=r.smear_shape,
        compose_options=compose_options,
    )
    by_source = bool(items) and all("source" in it for it in items)  # "real:" data: per-source splits
    if by_source and r.val_data is None:
        tr_items = [it for it in items if it["split"] != "val"]
        va_items = [it for it in items if it["split"] == "val"]
        if r.val_limit is not None:
            va_items = [
                it
                for src in dict.fromkeys(v["source"] for v in va_items)
                for it in [v for v in va_items if v["source"] == src][: int(r.val_limit)]
            ]
    elif r.val_data is not None:
        vitems, _, _ = load_detection_data(
            r.val_data,
            seed=r.seed + 1,
            n_smears=max(1, r.n_smears // 3),
            classes=class_names,
            smear_shape=r.smear_shape,
        )
        tr_items, va_items = items, vitems
    else:
        tr, va = _split_items(items, splits, r.val_fraction, r.seed, r.validate_on)
        tr_items, va_items = [items[i] for i in tr], [items[i] for i in va]
    return tr_items, va_items, class_names, splits, by_source


def _samplers(model, r: DetectorRecipe) -> dict:
    """Apply the recipe's proposal/RoI sampling settings (training only; torchvision's
    BalancedPositiveNegativeSampler) and return the values in effect."""
    samplers = {}
    for key, sampler, attr in (
        ("rpn_batch_size_per_image", model.rpn.fg_bg_sampler, "batch_size_per_image"),
        ("rpn_positive_fraction", model.rpn.fg_bg_sampler, "positive_fraction"),
        ("box_batch_size_per_image", model.roi_heads.fg_bg_sampler, "batch_size_per_image"),
        ("box_positive_fraction", model.roi_heads.fg_bg_sampler, "positive_fraction"),
    ):
        val = getattr(r, key)
        if val is not None:
            setattr(sampler, attr, type(getattr(sampler, attr))(val))
        samplers[key] = getattr(sampler, attr)
    return samplers


def _setup(run: SimpleNamespace, out: Path) -> None:
    """Optimiser, OneCycle schedule, the state of a resumed run, the recorded recipe, the EMA
    copy of the weights and the DDP wrapper."""
    import torch

    from ..models.detector import RegionDetector
    from . import distributed as ddp_glue

    r, det, resumed = run.recipe, run.det, run.resumed
    samplers = _samplers(det.model, r)
    params = [p for p in det.model.parameters() if p.requires_grad]
    run.opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=1e-4)
    run.total_steps = r.epochs * run.iters_per_epoch
    run.sched = torch.optim.lr_scheduler.OneCycleLR(run.opt, max_lr=r.lr, total_steps=run.total_steps, pct_start=0.1)
    run.history, run.best, run.start_epoch = [], {"metric": -1.0, "epoch": 0}, 0
    if resumed is not None:
        ex = resumed["extra"]
        if "optimizer" in ex:
            run.opt.load_state_dict(ex["optimizer"])
        if "scheduler" in ex:
            run.sched.load_state_dict(ex["scheduler"])
            run.sched.total_steps = run.total_steps  # a resumed run may ask for more epochs
        run.history = list(ex.get("history", []))
        if (out / "best.pt").is_file():  # else the resumed run writes its own best.pt
            run.best = dict(ex.get("best", run.best))
        run.start_epoch = int(ex.get("epoch", -1)) + 1
        run.rng = np.random.default_rng(r.seed + run.start_epoch)
    det.recipe = _recipe_record(run, samplers)
    det.config["recipe"] = r.replace(iters_per_epoch=run.iters_per_epoch).asdict()
    model = run.model = det.model
    model.transform._skip_resize = True
    run.vdet, run.ema_model = det, None  # vdet: the weights validated and saved
    if r.ema:  # exponential moving average of the weights (and BatchNorm statistics)
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        run.ema_model = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(r.ema)), use_buffers=True)
        raw = resumed["extra"].get("raw_state_dict") if resumed is not None else None
        if raw is not None:  # a resumed last.pt holds the averages; its raw weights go on training
            run.ema_model.n_averaged.fill_(1)
            model.load_state_dict(raw)
        run.vdet = RegionDetector(model=run.ema_model.module, config=det.config, recipe=det.recipe, device=run.det_dev)
    run.train_model = ddp_glue.wrap(model)  # DDP under torchrun: batch_size crops per rank and step
    if ddp_glue.world_size() > 1:  # each rank its own crops
        run.rng = np.random.default_rng([r.seed, run.start_epoch, ddp_glue.rank()])
    run.step = run.start_epoch * run.iters_per_epoch


def _recipe_record(run: SimpleNamespace, samplers: dict) -> dict:
    """The checkpoint's descriptive ``recipe`` dict (what was done, in words and values)."""
    r, jitter, splits = run.recipe, run.jitter, run.splits
    return {
        "arch": r.backbone,
        "scale": float(run.det.config["scale"]),
        "optimizer": "AdamW",
        "lr": r.lr,
        "weight_decay": 1e-4,
        "schedule": "OneCycle",
        "epochs": r.epochs,
        "iters_per_epoch": run.iters_per_epoch,
        "batch_size": r.batch_size,
        "crop_size": r.crop_size,
        "augment": "random crop"
        + (", scale jitter" if jitter else "")
        + ", h/v flips"
        + (", transpose" if r.rot90 else "")
        + ", colour/brightness/contrast jitter",
        "ema": float(r.ema),
        "scale_jitter": list(jitter) if jitter else None,
        "min_visible": float(r.min_visible),
        "samplers": samplers,
        "seed": r.seed,
        "data": str(run.data),
        "cell_diameter": run.train_diameter,
        "color_aug": bool(r.color_aug),
        "source_balance": (dict(r.source_balance) if isinstance(r.source_balance, dict) else True)
        if run.by_source and r.source_balance
        else False,
        "boxes": "one per connected region of the cell mask" if run.class_names == [REGION_CLASS] else "VOC boxes",
        "pretrained_backbone": bool(r.pretrained),
        "compose_options": {} if r.cluster_fraction is None else {"cluster_fraction": float(r.cluster_fraction)},
        "validation": (
            f"{r.val_fraction:.0%} of the train split (val split unused)"
            if splits and r.validate_on == "train"
            else "val split"
            if splits
            else f"{r.val_fraction:.0%} of the images"
        ),
    }


def _train_one_epoch(run: SimpleNamespace, epoch: int, *, emit, progress) -> float:
    """``iters_per_epoch`` steps on random augmented crops; returns the summed loss."""
    from . import distributed as ddp_glue

    r, model, rng = run.recipe, run.model, run.rng
    model.train()
    tot = 0.0
    for _ in range(run.iters_per_epoch):
        imgs, tgts = [], []
        for _ in range(r.batch_size):
            k = (
                int(rng.integers(len(run.prepared)))
                if run.weights is None
                else int(rng.choice(len(run.prepared), p=run.weights))
            )
            img, boxes, labels = run.prepared[k]
            c, t = _random_crop(
                img,
                boxes,
                labels,
                r.crop_size,
                rng,
                min_visible=float(r.min_visible),
                rot90=r.rot90,
                scale_jitter=run.jitter,
                color_aug=r.color_aug,
            )
            imgs.append(c.to(run.det_dev))
            tgts.append({k: v.to(run.det_dev) for k, v in t.items()})
        losses = run.train_model(imgs, tgts)
        loss = sum(losses.values())
        run.opt.zero_grad()
        loss.backward()
        run.opt.step()
        run.sched.step()
        if run.ema_model is not None:
            run.ema_model.update_parameters(model)
        run.step += 1
        ddp_glue.note_step(len(imgs))
        tot += float(loss.detach())
        emit(
            {
                "event": "step",
                "epoch": epoch + 1,
                "step": run.step,
                "steps": run.total_steps,
                "loss": float(loss.detach()),
            }
        )
        if progress is not None:
            progress("train", run.step, run.total_steps)
    return tot


def _validate(run: SimpleNamespace) -> tuple[float, dict]:
    """(metric, AP50 metrics) of the validated weights on the validation images; per-epoch
    validation is on the raw detections (test-time views would cost their number in time)."""
    from . import distributed as ddp_glue

    va_items = run.va_items
    preds = ddp_glue.map_sharded(lambda v: predict_items(run.vdet, [v], tta="none")[0], va_items)  # split over ranks
    m = ap50(preds, [(v["boxes"], v["labels"]) for v in va_items], run.class_names)
    metric = m["ap50"] if m["ap50"] is not None else 0.0
    if run.by_source:
        m["per_source"] = score_real(preds, va_items)
        metric = m["ap50"] = float(np.mean([v["aim"] for v in m["per_source"].values()]))
    return metric, m


def _save(run: SimpleNamespace, out: Path, epoch: int, metric: float, m: dict) -> None:
    """best.pt when the metric improved, last.pt (with optimiser, schedule and raw weights
    for ``resume``) every epoch; rank 0 only."""
    from ..models.checkpoint import save_checkpoint
    from . import distributed as ddp_glue

    vdet = run.vdet
    vdet.metrics = {**m, "epoch": epoch + 1}
    base_extra = {"epoch": epoch, "history": run.history}
    if metric > run.best["metric"]:
        run.best = {"metric": float(metric), "epoch": epoch + 1}
        if ddp_glue.is_main():
            save_checkpoint(vdet.to_checkpoint(extra={**base_extra, "best": run.best}), out / "best.pt")
    if ddp_glue.is_main():
        raw_extra = (
            {}
            if run.ema_model is None
            else {"raw_state_dict": {k: v.detach().cpu() for k, v in run.model.state_dict().items()}}
        )
        extra = {
            **base_extra,
            "best": run.best,
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            **raw_extra,
        }
        save_checkpoint(vdet.to_checkpoint(extra=extra), out / "last.pt")
    run.model.transform._skip_resize = True


def _finish(run: SimpleNamespace, out: Path, t0: float, emit) -> dict:
    """best.pt for a run without a validated epoch, the best epoch's metrics and, with
    test-time views in the recipe, its validation AP50 as ``evaluate`` computes it."""
    from ..models.checkpoint import load_checkpoint, save_checkpoint
    from ..models.detector import RegionDetector
    from . import distributed as ddp_glue

    if not (out / "best.pt").is_file() and ddp_glue.is_main():
        save_checkpoint(run.vdet.to_checkpoint(extra={"history": run.history}), out / "best.pt")
    ddp_glue.barrier()  # rank 0 has written best.pt
    best_ck = load_checkpoint(out / "best.pt", kind="detector")
    metrics = {"val": best_ck["metrics"], "best_epoch": run.best["epoch"]}
    mode = run.det.config.get("tta") or "none"
    if mode != "none" and ddp_glue.is_main():
        va_items = run.va_items
        best_det = RegionDetector.from_checkpoint(best_ck, device=run.det_dev)
        m = ap50(predict_items(best_det, va_items), [(v["boxes"], v["labels"]) for v in va_items], run.class_names)
        metrics["val_tta"] = {**m, "tta": mode}
        emit({"event": "validate_tta", "tta": mode, "metric": m["ap50"], "metric_name": "val_ap50"})
    return {"checkpoint": str(out / "best.pt"), "metrics": metrics, "history": run.history, "seconds": time.time() - t0}


def evaluate_detector(
    model,
    data,
    device="auto",
    *,
    seed: int = 12345,
    n_smears: int = 3,
    split: str | None = "val",
    score_threshold: float = 0.05,
    batch_size: int = 2,
    smear_shape=(1080, 1920),
    region_merge=None,
    tta=None,
    **options,
) -> dict:
    """AP50 (Pascal VOC all-point, IoU 0.5) of a detector checkpoint on ``data``.

    ``data`` as for :func:`train_detector`; "simulated" uses held-out seeds. For a VOC folder
    with split files only the ``split`` images are used (default "val"; None = all). Ground-truth
    classes are matched to the detector's class names; a single-class "cell region" detector is
    scored against every ground-truth box."""
    from .._device import detection_device, resolve_device
    from ..models.detector import RegionDetector, tta_mode

    dev = resolve_device(device)
    det_dev = detection_device(dev)
    det = RegionDetector.from_checkpoint(model, device=det_dev)
    tta = None if tta is None else tta_mode(tta)  # a bad value fails before the data are read
    names = det.class_names
    single = names == [REGION_CLASS]
    items, data_names, splits = load_detection_data(
        data, seed=seed, n_smears=n_smears, classes=None if single else names, smear_shape=smear_shape
    )
    if splits and split:
        items = [it for it, s in zip(items, splits) if s == split] or items
    if single:
        targets = [(it["boxes"], np.ones(len(it["boxes"]), np.int64)) for it in items]
    else:
        targets = [
            (it["boxes"], np.array([names.index(data_names[l - 1]) + 1 for l in it["labels"]], np.int64))
            for it in items
        ]
    preds = predict_items(
        det, items, batch_size=batch_size, score_threshold=score_threshold, region_merge=region_merge, tta=tta
    )
    return ap50(preds, targets, names)
