"""Train and evaluate the six-head multi-label RBC classifier.

Recipe (recorded in every checkpoint): the ImageNet backbone is frozen, so its pooled
features are computed once per patch and cached in memory; the six heads (FC512-FC1-sigmoid)
then train on those features with binary cross-entropy. The paper uses Adam at lr 1e-5; on
cached features that needs thousands of epochs, so the default here is Adam at lr 1e-3
(``lr=1e-5`` reproduces the paper's setting). A gradient-boosting classifier is then fitted
on the six head outputs for the abnormal call (abnormal = any type but Oval/Disc) and stored
in the checkpoint.

Data (``data``):

* ``"simulated"``: region patches cut from simulated smears (``n_smears`` smears, seed-based);
* a CSV file: a multi-label patch table (``path`` + six 0/1 type columns);
* a folder of class sub-folders of single-cell crops: the Xu et al. 2017 folder names map onto
  the six types (``constants.XU_FOLDER_TO_TYPE``); folders named like a type (``oval_disc``...)
  are taken as that type.

Default recipe on class folders (measured in docs/results.md): the crops are first split into
training and validation crops (stratified by type, ``val_fraction``); ``compose`` (default
1500) multi-cell patches of ``min_cells``-``max_cells`` (2-4) touching/overlapping cells are
composed from the *training* crops only and ``n_val_patches`` (default ``compose // 5``)
from the validation crops only, so no crop is on both sides; the heads train on single cells
+ patches. Every region is split into its cells (``split="cells"``, ``models.cells``); each
cell is centred on a padded canvas (``crop="pad"``, ``min_side=112``) at ``input_size`` 160,
features are average + max pooled from the last map plus max pooled from stage 4
(``pool="avgmax-s4"``) and standardised; every cell is seen in the eight symmetries of its
canvas (``tta="d4"``: rotated/mirrored copies train the heads, predictions average the eight
views' logits);
a region's logit is the largest over its cells, in training (:class:`Bags`,
:func:`_train_heads`) as in prediction; the best epoch is the one with the highest
exact-match accuracy on the validation single cells + patches. ``compose=0`` trains on single
cells only; ``split="unet"`` finds the cells with a learned splitter trained first on the
training crops (:mod:`napari_sickle.training.splitter`); ``split="none"`` classifies the whole region (192 px, ``min_side=160``);
``split="none", pool="avg", crop="stretch", standardize=False, tta="none"`` is the original.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from .multilabel_data import (  # noqa: F401 - re-exported: importable from this module too
    Bags,
    PatchSet,
    _abnormal_truth,
    _folder_type,
    _patch_features,
    _patient,
    _rgb,
    _split,
    compose_split_patches,
    compute_features,
    load_patches,
)
from .multilabel_metrics import fit_abnormal_model, multilabel_metrics
from .recipes import MultilabelRecipe

#: head epochs. Each epoch shows every cell in its eight views (``tta="d4"``), so few epochs
#: suffice; the validation exact match levels off early (docs/results.md).
DEFAULT_EPOCHS = 10
DEFAULT_LR = MultilabelRecipe.lr
#: multi-cell patches composed from the training crops by default (class-folder data)
DEFAULT_COMPOSE = 1500
#: mini-batch size of the head training (``batch_size`` is the feature-extraction batch); large
#: batches keep the CPU time per epoch of these 6 x FC512 heads low
DEFAULT_HEAD_BATCH_SIZE = MultilabelRecipe.head_batch_size


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
def head_batch(batch_size: int, n: int) -> int:
    """Mini-batch size for ``n`` training rows: ``batch_size``, but small enough that an epoch
    has at least 8 optimiser steps (tiny data sets), and at least 16."""
    return int(max(16, min(int(batch_size), n // 8)))


def _bag_rows(starts: np.ndarray, counts: np.ndarray, regions: np.ndarray):
    """Input rows of ``regions`` and, per row, its position in ``regions``."""
    c = counts[regions]
    local = np.repeat(np.arange(len(regions)), c)
    rows = np.repeat(starts[regions], c) + (np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c))
    return rows, local


def region_logits(heads, bags: Bags, device="cpu"):
    """Per-region logits (n, 6): the heads on every input, largest per region (views averaged)."""
    import torch

    from ..models.multilabel import segment_max

    x = torch.as_tensor(bags.X, dtype=torch.float32).to(device)
    return segment_max(heads(x), bags.owner, bags.n)


def _train_heads(
    heads,
    X: Bags,
    Y,
    Xv: Bags,
    Yv,
    *,
    epochs,
    lr,
    batch_size,
    seed,
    optimizer_state=None,
    start_epoch=0,
    on_epoch=None,
    progress=None,
    device="cpu",
):
    """Train the heads on regions (multiple-instance: a region's logit is the largest over its
    inputs; with one input per region this is plain supervised training). Every view of a
    region is a training region of its own (flipped copies). ``on_epoch(epoch, loss, val_loss,
    val_probs, optimizer)`` after every epoch."""
    state = _heads_setup(heads, X, Y, Yv, lr=lr, batch_size=batch_size, seed=seed, optimizer_state=optimizer_state)
    heads.to(device)
    for epoch in range(start_epoch, epochs):
        loss = _train_one_epoch(heads, state, device)
        vloss, vprobs = _validate(heads, Xv, state, device)
        if progress is not None:
            progress("train", epoch + 1, epochs)
        if on_epoch is not None:
            on_epoch(epoch, loss, vloss, vprobs, state.opt)
    return state.opt


def _heads_setup(heads, X: Bags, Y, Yv, *, lr, batch_size, seed, optimizer_state=None) -> SimpleNamespace:
    """Training rows (one region per view), their bag layout, the optimiser and the loss."""
    import torch

    X, views = X.views_as_regions()
    opt = torch.optim.Adam(heads.parameters(), lr=lr)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    return SimpleNamespace(
        X=X,
        Y=torch.as_tensor(np.tile(np.asarray(Y, np.float32), (views, 1))),
        Xt=torch.as_tensor(X.X, dtype=torch.float32),
        starts=np.searchsorted(X.owner, np.arange(X.n)).astype(np.int64),
        counts=np.bincount(X.owner, minlength=X.n).astype(np.int64),
        batch_size=head_batch(batch_size, X.n),
        g=torch.Generator().manual_seed(seed),
        opt=opt,
        lossf=torch.nn.BCEWithLogitsLoss(),
        Yv=torch.as_tensor(np.asarray(Yv, np.float32)),
    )


def _train_one_epoch(heads, state: SimpleNamespace, device) -> float:
    """One pass over the training regions in a random order; returns the mean loss."""
    import torch

    from ..models.multilabel import segment_max

    X, opt = state.X, state.opt
    heads.train()
    perm = torch.randperm(X.n, generator=state.g).numpy()
    tot = 0.0
    for i in range(0, X.n, state.batch_size):
        b = perm[i : i + state.batch_size]
        rows, local = _bag_rows(state.starts, state.counts, b)
        opt.zero_grad()
        logits = segment_max(heads(state.Xt[rows].to(device)), local, len(b))
        loss = state.lossf(logits, state.Y[b].to(device))
        loss.backward()
        opt.step()
        tot += float(loss.detach()) * len(b)
    return tot / max(X.n, 1)


def _validate(heads, Xv: Bags, state: SimpleNamespace, device) -> tuple[float, np.ndarray]:
    """(validation loss, validation probabilities (n, 6)); NaN loss without validation regions."""
    import torch

    Yv = state.Yv
    heads.eval()
    with torch.no_grad():
        vlogits = region_logits(heads, Xv, device).cpu() if len(Xv) else torch.zeros((0, Yv.shape[-1]))
        vloss = float(state.lossf(vlogits, Yv)) if len(Xv) else float("nan")
    return vloss, torch.sigmoid(vlogits).numpy()


def train_multilabel(
    data,
    out,
    recipe: MultilabelRecipe | None = None,
    *,
    device="auto",
    resume=None,
    folds=None,
    progress=None,
    log=None,
    **options,
) -> dict:
    """Train the six heads (+ abnormal model) on cached frozen-backbone features.

    ``recipe``: a :class:`~napari_sickle.training.recipes.MultilabelRecipe`; keyword
    ``options`` (its field names) override it, unknown ones are refused.
    Writes ``out/best.pt`` (best validation exact match) and ``out/last.pt`` (for ``resume``)
    after every epoch. ``folds=k`` first runs k-fold cross-validation (grouped by patient /
    smear when there are enough groups) and reports it under ``metrics["cv"]``.
    ``val_data``: an optional separate validation source instead of a random split.
    ``split="unet"`` (class folders only) first trains the learned cell splitter on the
    training crops (:func:`napari_sickle.training.splitter.train_splitter`, options
    ``splitter_options``); it is stored in the checkpoint with the heads.
    Returns {"checkpoint", "metrics", "history", "seconds"}.
    """
    from ..models.checkpoint import CheckpointError, load_checkpoint

    t0 = time.time()
    recipe = MultilabelRecipe.build(recipe, options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    emit = log or (lambda d: None)
    run = _load(data, recipe, resume=resume, device=device, progress=progress, emit=emit)
    r = run.recipe
    metrics: dict[str, Any] = {}
    if folds:
        metrics["cv"] = _cross_validate(
            run.feats,
            run.Y,
            np.asarray(run.ps.groups),
            int(folds),
            epochs=r.epochs,
            lr=r.lr,
            batch_size=r.batch_size,
            seed=r.seed,
            log=emit,
            progress=progress,
        )
    _load_validation(run, progress, emit)
    _setup(run, out)
    _train_heads(
        run.clf.net.heads,
        run.Xtr,
        run.Ytr,
        run.Xva,
        run.Yva,
        epochs=r.epochs,
        lr=r.lr,
        batch_size=int(r.head_batch_size),
        seed=r.seed,
        optimizer_state=run.opt_state,
        start_epoch=run.start_epoch,
        on_epoch=lambda *a: _end_epoch(run, out, emit, *a),
        progress=progress,
        device=run.dev,
    )
    if not (out / "best.pt").is_file():
        raise CheckpointError(f"training wrote no best checkpoint in {out}")
    best_ck = load_checkpoint(out / "best.pt", kind="multilabel")
    metrics.update({"val": best_ck["metrics"], "best_epoch": run.best["epoch"]})
    return {"checkpoint": str(out / "best.pt"), "metrics": metrics, "history": run.history, "seconds": time.time() - t0}


def _load(data, recipe: MultilabelRecipe, *, resume, device, progress, emit) -> SimpleNamespace:
    """The classifier (new, or from ``resume`` with its stored settings), the patches, the
    train/validation split, the learned splitter when asked for and every patch's features."""
    import torch

    from .._device import resolve_device

    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    dev = resolve_device(device)
    r, clf, resumed, folder_data = _classifier(data, recipe, resume, dev)
    if clf.split == "unet" and not folder_data:
        raise ValueError(
            f"split='unet' trains its cell splitter from single-cell crops, so --data must be a folder "
            f"of class sub-folders; {data} is not. Use split='cells' (the rule-based split) instead."
        )
    ps = load_patches(data, seed=r.seed, n_smears=r.n_smears, progress=progress, smear_shape=r.smear_shape)
    if len(ps) < 2:
        from ..io.datasets import DatasetError

        raise DatasetError(f"{data}: only {len(ps)} patch(es); at least 2 are needed to train")
    tr, va = _split(ps, r.val_fraction, r.seed) if r.val_data is None else (None, None)
    splitter_stats = None
    if clf.split == "unet" and not clf.config["splitter"].get("trained"):
        from ..data.compose import load_crops
        from .splitter import fit_classifier_splitter

        names = {Path(ps.names[i]).resolve() for i in (tr if r.val_data is None else range(len(ps)))}
        splitter_stats = fit_classifier_splitter(
            clf,
            [c for c in load_crops(data) if Path(c.path).resolve() in names],
            seed=r.seed,
            device=dev,
            progress=progress,
            **(r.splitter_options or {}),
        )
        emit({"event": "splitter", **splitter_stats})
    feats = compute_features(clf, ps, batch_size=r.batch_size, progress=progress)
    emit(
        {
            "event": "data",
            "n": int(len(ps)),
            "skipped": int(ps.skipped),
            "feature_dim": feats.dim,
            "inputs": int(len(feats.owner)),
        }
    )
    return SimpleNamespace(
        recipe=r,
        data=data,
        folder_data=folder_data,
        dev=dev,
        resumed=resumed,
        clf=clf,
        ps=ps,
        tr=tr,
        va=va,
        feats=feats,
        Y=ps.Y,
        splitter_stats=splitter_stats,
    )


def _classifier(data, recipe: MultilabelRecipe, resume, dev):
    """(resolved recipe, classifier, resumed checkpoint or None, data are class folders): a new
    classifier, or the one in ``resume`` whose stored settings replace the recipe's."""
    from ..models.checkpoint import load_checkpoint
    from ..models.multilabel import RBCClassifier, new_classifier

    resumed = None
    if resume is not None:
        if not Path(resume).is_file():
            raise FileNotFoundError(f"--resume: checkpoint {resume} does not exist")
        resumed = load_checkpoint(resume, kind="multilabel")
        rc = resumed["config"]
        recipe = recipe.replace(
            backbone=rc["backbone"],
            input_size=rc["input_size"],
            pool=rc.get("pool", "avg"),
            crop=rc.get("crop", "stretch"),
            min_side=rc.get("min_side", 0),
            standardize=bool(rc.get("standardize", False)),
            tta=rc.get("tta", "none"),
            split=rc.get("split", "none"),
        )
    folder_data = isinstance(data, (str, Path)) and str(data) != "simulated" and Path(data).is_dir()
    r = recipe.resolved(folder_data=folder_data, default_epochs=DEFAULT_EPOCHS, default_compose=DEFAULT_COMPOSE)
    if resumed is not None:
        clf = RBCClassifier.from_checkpoint(resumed, device=dev)
    else:
        clf = new_classifier(
            r.backbone,
            input_size=r.input_size,
            pretrained=r.pretrained,
            device=dev,
            pool=r.pool,
            crop=r.crop,
            min_side=r.min_side,
            standardize=bool(r.standardize),
            tta=r.tta,
            split=r.split,
            cell_split=r.cell_split,
            splitter=r.splitter,
        )
    r = r.replace(input_size=clf.input_size)
    return r, clf, resumed, folder_data


def _load_validation(run: SimpleNamespace, progress, emit) -> None:
    """Training and validation features (``val_data`` or the split), with composed multi-cell
    patches from the training / validation crops on class folders."""
    r, clf, ps, feats, Y = run.recipe, run.clf, run.ps, run.feats, run.Y
    tr, va = run.tr, run.va
    if r.val_data is not None:
        vps = load_patches(
            r.val_data, seed=r.seed + 1, n_smears=max(1, r.n_smears // 4), progress=progress, smear_shape=r.smear_shape
        )
        vfeats = compute_features(clf, vps, batch_size=r.batch_size)
        Xtr, Ytr, Xva, Yva = feats, Y, vfeats, vps.Y
        tr = np.arange(len(ps))
        va = np.arange(0)
    else:
        Xtr, Ytr, Xva, Yva = feats.take(tr), Y[tr], feats.take(va), Y[va]
    run.n_single_val = len(Yva)
    run.n_patches = {"train": 0, "val": 0}
    if r.compose and run.folder_data:
        # multi-cell patches: training patches from training crops, validation patches from validation crops
        trp, vap = compose_split_patches(
            run.data,
            [ps.names[i] for i in tr],
            [ps.names[i] for i in va],
            r.compose,
            r.n_val_patches,
            seed=r.seed,
            min_cells=r.min_cells,
            max_cells=r.max_cells,
            progress=progress,
        )
        if trp:
            Xp, Yp = _patch_features(clf, trp, r.batch_size, progress, "features: training patches")
            Xtr, Ytr = Bags.cat([Xtr, Xp]), np.concatenate([Ytr, Yp])
        if vap:
            Xp, Yp = _patch_features(clf, vap, r.batch_size, progress, "features: validation patches")
            Xva, Yva = Bags.cat([Xva, Xp]), np.concatenate([Yva, Yp])
        run.n_patches = {"train": len(trp), "val": len(vap)}
        emit({"event": "data", "composed_train_patches": len(trp), "composed_val_patches": len(vap)})
    run.Xtr, run.Ytr, run.Xva, run.Yva = Xtr, Ytr, Xva, Yva


def _setup(run: SimpleNamespace, out: Path) -> None:
    """Feature standardisation, the recorded recipe and the state of a resumed run."""
    clf, resumed = run.clf, run.resumed
    if getattr(clf.net.heads, "feat_mean", None) is not None and resumed is None:
        clf.net.heads.set_standardization(run.Xtr.X)
    clf.recipe = _recipe_record(run)
    clf.config["recipe"] = run.recipe.asdict()
    run.history = list(resumed["extra"].get("history", [])) if resumed else []
    run.best = {"metric": -1.0, "epoch": -1}
    if resumed is not None and (out / "best.pt").is_file():
        run.best = dict(resumed["extra"].get("best", run.best))
    run.start_epoch = int(resumed["extra"].get("epoch", -1)) + 1 if resumed else 0
    run.opt_state = resumed["extra"].get("optimizer") if resumed else None


def _recipe_record(run: SimpleNamespace) -> dict:
    """The checkpoint's descriptive ``recipe`` dict (what was done, in words and values)."""
    r, clf = run.recipe, run.clf
    return {
        "features": "frozen ImageNet backbone, pooled, cached",
        "backbone": r.backbone,
        "input_size": clf.input_size,
        "pool": clf.pool,
        "crop": clf.config.get("crop", "stretch"),
        "min_side": clf.config.get("min_side", 0),
        "standardize": bool(clf.config.get("standardize", False)),
        "tta": clf.tta,
        "split": clf.split,
        "cell_split": clf.config.get("cell_split"),
        **({"splitter": run.splitter_stats} if run.splitter_stats else {}),
        "aggregation": "largest logit over a region's cells (multiple-instance, train and predict)"
        if clf.split in ("cells", "unet")
        else "one input per region",
        "composed_patches": run.n_patches,
        "min_cells": r.min_cells,
        "max_cells": r.max_cells,
        "selection": "best epoch by validation exact-match accuracy (single cells + composed patches)",
        "optimizer": "Adam",
        "lr": r.lr,
        "head_batch_size": int(r.head_batch_size),
        "loss": "BCEWithLogits per type",
        "epochs": r.epochs,
        "batch_size": r.batch_size,
        "seed": r.seed,
        "data": str(run.data),
        "n_patches": int(len(run.ps)),
        "val_fraction": r.val_fraction,
        "abnormal_model": "sklearn GradientBoostingClassifier(n_estimators=100, max_depth=2) on the six outputs",
        "paper_lr": 1e-5,
    }


def _end_epoch(run: SimpleNamespace, out: Path, emit, epoch, loss, vloss, vprobs, opt) -> None:
    """Validation metrics of the epoch, the abnormal model refitted when the heads improved,
    the epoch record, best.pt when the exact match improved and last.pt."""
    from ..models.checkpoint import save_checkpoint

    r, clf, Yva, best = run.recipe, run.clf, run.Yva, run.best
    m = multilabel_metrics(Yva, vprobs)
    metric = m["exact_match_accuracy"] if len(Yva) else None
    n_single = run.n_single_val
    if run.n_patches["val"] and n_single:
        m["single_exact_match_accuracy"] = multilabel_metrics(Yva[:n_single], vprobs[:n_single])["exact_match_accuracy"]
        m["multi_exact_match_accuracy"] = multilabel_metrics(Yva[n_single:], vprobs[n_single:])["exact_match_accuracy"]
    improved = metric is not None and metric > best["metric"]
    if improved or epoch + 1 == r.epochs or clf.abnormal_model is None:
        # the abnormal model follows the heads it was fitted on
        Xtr = run.Xtr
        clf.abnormal_model = fit_abnormal_model(clf.region_probs(Xtr.X, Xtr.owner, Xtr.n), run.Ytr, seed=r.seed)
    m["abnormal_accuracy"] = (
        float(np.mean((clf.abnormal_proba(vprobs) >= 0.5) == _abnormal_truth(Yva))) if len(Yva) else float("nan")
    )
    rec = {
        "event": "epoch",
        "epoch": epoch + 1,
        "epochs": r.epochs,
        "loss": loss,
        "val_loss": vloss,
        "metric": metric,
        "metric_name": "val_exact_match",
        "mean_auc": m["mean_auc"],
        "exact_match_accuracy": m["exact_match_accuracy"],
        "abnormal_accuracy": m["abnormal_accuracy"],
        **{k: m[k] for k in ("single_exact_match_accuracy", "multi_exact_match_accuracy") if k in m},
    }
    run.history.append(rec)
    emit(rec)
    clf.metrics = {**{k: v for k, v in m.items()}, "epoch": epoch + 1}
    extra = {"epoch": epoch, "history": run.history}
    if improved:
        best.update(metric=float(metric), epoch=epoch + 1)
        save_checkpoint(clf.to_checkpoint(extra={**extra, "best": dict(best)}), out / "best.pt")
    save_checkpoint(
        clf.to_checkpoint(extra={**extra, "best": dict(best), "optimizer": opt.state_dict()}), out / "last.pt"
    )


def _cross_validate(feats, Y, groups, k, *, epochs, lr, batch_size, seed, log, progress):
    import torch
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    from ..models.multilabel import make_heads

    strat = np.argmax(Y, axis=1) * 2 + _abnormal_truth(Y)
    n_groups = len(np.unique(groups))
    dummy = np.zeros(len(Y))
    if n_groups >= k:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = list(splitter.split(dummy, strat, groups))
        grouped = True
    else:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = list(splitter.split(dummy, strat))
        grouped = False
    fold_metrics = []
    for f, (tr, te) in enumerate(splits):
        torch.manual_seed(seed + f)
        ftr, fte = feats.take(tr), feats.take(te)
        heads = make_heads(feats.dim, standardize=True)
        heads.set_standardization(ftr.X)
        _train_heads(heads, ftr, Y[tr], fte, Y[te], epochs=epochs, lr=lr, batch_size=batch_size, seed=seed + f)
        heads.eval()
        with torch.no_grad():
            ptr = torch.sigmoid(region_logits(heads, ftr)).numpy()
            pte = torch.sigmoid(region_logits(heads, fte)).numpy()
        abn = fit_abnormal_model(ptr, Y[tr], seed=seed)
        m = multilabel_metrics(Y[te], pte, abn.predict(pte))
        m["fold"] = f + 1
        fold_metrics.append(m)
        log({"event": "fold", "fold": f + 1, "folds": k, **{kk: v for kk, v in m.items() if kk != "auc"}})
        if progress is not None:
            progress("cv", f + 1, k)
    summ = {}
    for key in ("mean_auc", "exact_match_accuracy", "abnormal_accuracy"):
        vals = [m[key] for m in fold_metrics if m[key] is not None]
        summ[key] = float(np.mean(vals)) if vals else None
        summ[key + "_std"] = float(np.std(vals)) if vals else None
    return {"folds": fold_metrics, "mean": summ, "k": k, "grouped_by_patient": grouped}


# ------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------
def evaluate_multilabel(
    model,
    data,
    device="auto",
    *,
    batch_size: int = 64,
    seed: int = 12345,
    n_smears: int = 2,
    threshold: float | None = None,
    smear_shape=(1080, 1920),
    **options,
) -> dict:
    """Per-type AUC, mean AUC, exact-match and abnormal accuracy of a checkpoint on ``data``.

    ``data`` as for :func:`train_multilabel`; "simulated" uses held-out seeds (``seed``)."""
    from .._device import resolve_device
    from ..models.multilabel import RBCClassifier

    dev = resolve_device(device)
    clf = RBCClassifier.from_checkpoint(model, device=dev)
    ps = load_patches(data, seed=seed, n_smears=n_smears, smear_shape=smear_shape)
    feats = compute_features(clf, ps, batch_size=batch_size)
    probs = clf.region_probs(feats.X, feats.owner, feats.n)
    thr = float(threshold if threshold is not None else clf.config.get("type_threshold", 0.5))
    m = multilabel_metrics(ps.Y, probs, clf.abnormal_proba(probs) >= 0.5, threshold=thr)
    if ps.skipped:
        m["skipped"] = int(ps.skipped)
    return m
