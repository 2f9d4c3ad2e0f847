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
from typing import Any

import numpy as np

from ..constants import ABNORMAL_TYPES, RBC_TYPES, XU_FOLDER_TO_TYPE

#: head epochs. Each epoch shows every cell in its eight views (``tta="d4"``), so few epochs
#: suffice; the validation exact match levels off early (docs/results.md).
DEFAULT_EPOCHS = 10
DEFAULT_LR = 1e-3
#: multi-cell patches composed from the training crops by default (class-folder data)
DEFAULT_COMPOSE = 1500
#: mini-batch size of the head training (``batch_size`` is the feature-extraction batch); large
#: batches keep the CPU time per epoch of these 6 x FC512 heads low
DEFAULT_HEAD_BATCH_SIZE = 256


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
class PatchSet:
    """Images with the boxes to classify and their 0/1 type rows.

    ``items``: list of (image (H,W,3) uint8, boxes (k,4)); ``y``: (N,6) in item/box order;
    ``groups``: (N,) group ids (patient / smear) for grouped splits; ``names``: (N,) source names.
    """

    def __init__(self):
        self.items: list[tuple[np.ndarray, np.ndarray]] = []
        self.y: list[np.ndarray] = []
        self.groups: list[str] = []
        self.names: list[str] = []
        self.skipped = 0

    def add(self, image, boxes, y, group, names):
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        y = np.asarray(y, dtype=np.float32).reshape(-1, len(RBC_TYPES))
        self.items.append((image, boxes))
        self.y.extend(list(y))
        self.groups.extend([group] * len(boxes))
        self.names.extend(list(names))

    @property
    def Y(self) -> np.ndarray:
        return np.asarray(self.y, dtype=np.float32).reshape(-1, len(RBC_TYPES))

    def __len__(self):
        return len(self.y)


def _rgb(path):
    from ..io.images import read_image, to_rgb_uint8

    return to_rgb_uint8(read_image(path))


def _folder_type(name: str) -> str:
    if name in XU_FOLDER_TO_TYPE:
        return XU_FOLDER_TO_TYPE[name]
    low = name.lower().replace("-", "_").replace("/", "_").replace(" ", "_")
    for t in RBC_TYPES:
        if low == t:
            return t
    from ..io.datasets import DatasetError

    raise DatasetError(
        f"class folder {name!r} maps to none of the six RBC types; use the Xu et al. folder names "
        f"{sorted(XU_FOLDER_TO_TYPE)} or the type names {list(RBC_TYPES)}"
    )


def _patient(path: str) -> str:
    stem = Path(path).stem
    return stem.split("_")[0] if "_" in stem else stem


def load_patches(
    data, *, seed: int = 0, n_smears: int = 7, compose: int = 0, progress=None, smear_shape=(1080, 1920)
) -> PatchSet:
    """Load a multi-label patch set from any supported ``data`` (see module docstring)."""
    from ..io.datasets import DatasetError

    ps = PatchSet()
    if isinstance(data, str) and data == "simulated":
        from ..data.simulate import simulate_smear

        for k in range(n_smears):
            sm = simulate_smear(seed=seed * 1000 + k, shape=smear_shape)
            reg = sm.regions
            boxes = reg[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float32)
            ps.add(
                sm.image,
                boxes,
                reg[list(RBC_TYPES)].to_numpy(),
                f"smear{k}",
                [f"smear{seed * 1000 + k}:{r}" for r in reg["region_id"]],
            )
            if progress is not None:
                progress("simulate", k + 1, n_smears)
        return ps
    path = Path(data)
    if path.is_file() and path.suffix.lower() == ".csv":
        from ..io.datasets import read_multilabel_table

        df = read_multilabel_table(path)
        for i, row in enumerate(df.itertuples(index=False)):
            try:
                img = _rgb(row.path)
            except ValueError:
                ps.skipped += 1
                continue
            h, w = img.shape[:2]
            ps.add(img, [[0, 0, w, h]], [[getattr(row, t) for t in RBC_TYPES]], _patient(row.path), [row.path])
            if progress is not None:
                progress("load", i + 1, len(df))
        if len(ps) == 0:
            raise DatasetError(f"{path}: none of the listed images could be read")
        return ps
    if path.is_dir():
        from ..io.datasets import scan_class_folders

        df = scan_class_folders(path)
        ps.skipped = int(df.attrs.get("skipped", 0))
        types = {lab: _folder_type(lab) for lab in df["label"].unique()}
        for i, row in enumerate(df.itertuples(index=False)):
            try:
                img = _rgb(row.path)
            except ValueError:
                ps.skipped += 1
                continue
            h, w = img.shape[:2]
            y = np.zeros(len(RBC_TYPES))
            y[RBC_TYPES.index(types[row.label])] = 1
            ps.add(img, [[0, 0, w, h]], [y], _patient(row.path), [row.path])
            if progress is not None:
                progress("load", i + 1, len(df))
        if compose:
            from ..data.compose import compose_patches, load_crops

            crops = load_crops(path)
            for j, (patch, types_, n_cells) in enumerate(compose_patches(crops, int(compose), seed=seed)):
                h, w = patch.shape[:2]
                ps.add(patch, [[0, 0, w, h]], [types_], f"composed{j}", [f"composed:{j}"])
        return ps
    raise DatasetError(
        f"{data}: not a multi-label data source; give 'simulated', a CSV patch table or a folder of class folders"
    )


class Bags:
    """Features of the network inputs of ``n`` regions, grouped by region.

    ``X``: (M, D) or (M, V, D) (V views of each input) float32; ``owner``: (M,) index of the
    region each input belongs to, non-decreasing, every region has at least one input. With
    ``split="none"`` every region is one input (``owner = arange(n)``); with ``split="cells"``
    a region has one input per cell and its logits are the largest over them
    (``models.multilabel.segment_max``)."""

    def __init__(self, X, owner=None, n: int | None = None):
        self.X = np.asarray(X, dtype=np.float32)
        self.owner = np.arange(len(self.X), dtype=np.int64) if owner is None else np.asarray(owner, np.int64)
        self.n = int(len(self.X) if n is None else n)

    def __len__(self):
        return self.n

    @property
    def dim(self) -> int:
        return int(self.X.shape[-1])

    def take(self, idx) -> "Bags":
        """The regions ``idx`` (distinct), renumbered 0..len(idx)-1 in that order."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        pos = np.full(self.n, -1, np.int64)
        pos[idx] = np.arange(len(idx))
        rows = np.nonzero(pos[self.owner] >= 0)[0]
        new = pos[self.owner[rows]]
        order = np.argsort(new, kind="stable")
        return Bags(self.X[rows[order]], new[order], len(idx))

    @staticmethod
    def cat(parts) -> "Bags":
        parts = [p for p in parts if p.n]
        if not parts:
            return Bags(np.zeros((0, 1), np.float32), np.zeros(0, np.int64), 0)
        offs = np.cumsum([0] + [p.n for p in parts[:-1]])
        return Bags(
            np.concatenate([p.X for p in parts]),
            np.concatenate([p.owner + o for p, o in zip(parts, offs)]),
            sum(p.n for p in parts),
        )

    def views_as_regions(self) -> tuple["Bags", int]:
        """(M, V, D) -> one bag per (view, region): (Bags of V * n regions, V); a no-op for (M, D)."""
        if self.X.ndim != 3:
            return self, 1
        v = self.X.shape[1]
        return Bags(
            np.concatenate([self.X[:, k] for k in range(v)]),
            np.concatenate([self.owner + k * self.n for k in range(v)]),
            v * self.n,
        ), v


def compute_features(clf, ps: PatchSet, batch_size: int = 64, progress=None) -> Bags:
    """Pooled backbone features of the inputs of every box of a PatchSet (batched), as
    :class:`Bags` (one input per box, or per cell with ``split="cells"``)."""
    import torch

    feats, owners = [], []
    n_total = len(ps)
    n_boxes = 0
    # group small whole-image crops into batches
    pending = []

    def flush():
        if pending:
            crops = torch.cat(pending)
            pending.clear()
            feats.append(clf.features(crops, batch_size=batch_size).numpy())
            if progress is not None:
                progress("features", n_boxes, n_total)

    for image, boxes in ps.items:
        crops, owner = clf.region_crops(image, boxes)
        pending.append(crops.cpu())
        owners.append(owner + n_boxes)
        n_boxes += len(boxes)
        if sum(len(p) for p in pending) >= batch_size:
            flush()
    flush()
    if not feats:
        return Bags(np.zeros((0, 1), np.float32), np.zeros(0, np.int64), 0)
    return Bags(np.concatenate(feats), np.concatenate(owners), n_boxes)


# ------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------
def multilabel_metrics(
    y_true: np.ndarray, probs: np.ndarray, abnormal_pred: np.ndarray | None = None, threshold: float = 0.5
) -> dict:
    """Per-type ROC AUC, mean AUC, exact-match accuracy and abnormal accuracy.

    A type whose truth is all 0 or all 1 has no AUC (``None``) and is left out of the mean."""
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true).astype(int).reshape(-1, len(RBC_TYPES))
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(RBC_TYPES))
    auc = {}
    for j, t in enumerate(RBC_TYPES):
        if len(np.unique(y_true[:, j])) < 2:
            auc[t] = None
        else:
            auc[t] = float(roc_auc_score(y_true[:, j], probs[:, j]))
    vals = [v for v in auc.values() if v is not None]
    pred = (probs >= threshold).astype(int)
    exact = float(np.mean(np.all(pred == y_true, axis=1))) if len(y_true) else float("nan")
    abn_true = _abnormal_truth(y_true)
    if abnormal_pred is None:
        abnormal_pred = _abnormal_truth(pred)
    abn_acc = float(np.mean(np.asarray(abnormal_pred).astype(int) == abn_true)) if len(y_true) else float("nan")
    return {
        "auc": auc,
        "mean_auc": float(np.mean(vals)) if vals else None,
        "exact_match_accuracy": exact,
        "abnormal_accuracy": abn_acc,
        "n": int(len(y_true)),
    }


def _abnormal_truth(y: np.ndarray) -> np.ndarray:
    idx = [RBC_TYPES.index(t) for t in ABNORMAL_TYPES]
    return (np.asarray(y)[:, idx].max(axis=1) > 0).astype(int)


def fit_abnormal_model(probs: np.ndarray, y: np.ndarray, seed: int = 0):
    """GradientBoostingClassifier on the six head outputs -> abnormal (0/1)."""
    from sklearn.ensemble import GradientBoostingClassifier

    target = _abnormal_truth(y)
    gb = GradientBoostingClassifier(n_estimators=100, max_depth=2, learning_rate=0.1, random_state=seed)
    if len(np.unique(target)) < 2:
        from sklearn.dummy import DummyClassifier

        return DummyClassifier(strategy="most_frequent").fit(probs, target)
    return gb.fit(probs, target)


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
def compose_split_patches(
    root,
    train_paths,
    val_paths,
    n_train: int,
    n_val: int,
    *,
    seed: int = 0,
    min_cells: int = 2,
    max_cells: int = 4,
    progress=None,
):
    """Compose multi-cell patches from the crops under ``root``: ``n_train`` from the crops whose
    file is in ``train_paths`` and ``n_val`` from those in ``val_paths`` (no crop on both sides).
    Returns two lists of ``(patch rgb uint8, types (6,), n_cells)``."""
    from ..data.compose import compose_patches, load_crops

    crops = load_crops(root)
    tr_set = {Path(p).resolve() for p in train_paths}
    va_set = {Path(p).resolve() for p in val_paths}
    tr_crops = [c for c in crops if Path(c.path).resolve() in tr_set]
    va_crops = [c for c in crops if Path(c.path).resolve() in va_set]
    trp = (
        compose_patches(tr_crops, int(n_train), seed=seed * 1000 + 11, max_cells=max_cells, min_cells=min_cells)
        if n_train and tr_crops
        else []
    )
    if progress is not None:
        progress("compose", 1, 2)
    vap = (
        compose_patches(va_crops, int(n_val), seed=seed * 1000 + 12, max_cells=max_cells, min_cells=min_cells)
        if n_val and va_crops
        else []
    )
    if progress is not None:
        progress("compose", 2, 2)
    return trp, vap


def _patch_features(clf, patches, batch_size, progress, stage):
    ps = PatchSet()
    for i, (img, types, _n) in enumerate(patches):
        h, w = img.shape[:2]
        ps.add(img, [[0, 0, w, h]], [types], f"composed{i}", [f"composed:{i}"])
    cb = None if progress is None else (lambda _s, d, t: progress(stage, d, t))
    return compute_features(clf, ps, batch_size=batch_size, progress=cb), ps.Y


def _split(ps: PatchSet, val_fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    n = len(ps)
    idx = np.arange(n)
    if n < 5 or val_fraction <= 0:
        return idx, idx
    for strat in (np.argmax(ps.Y, axis=1), _abnormal_truth(ps.Y), None):  # by type if every type has 2+
        try:
            return train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=strat)
        except ValueError:
            continue


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
    region is a training region of its own (flipped copies)."""
    import torch

    from ..models.multilabel import segment_max

    X, views = X.views_as_regions()
    Y = torch.as_tensor(np.tile(np.asarray(Y, np.float32), (views, 1)))
    Xt = torch.as_tensor(X.X, dtype=torch.float32)
    starts = np.searchsorted(X.owner, np.arange(X.n)).astype(np.int64)
    counts = np.bincount(X.owner, minlength=X.n).astype(np.int64)
    batch_size = head_batch(batch_size, X.n)

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(heads.parameters(), lr=lr)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    lossf = torch.nn.BCEWithLogitsLoss()
    Yv = torch.as_tensor(np.asarray(Yv, np.float32))
    heads.to(device)
    for epoch in range(start_epoch, epochs):
        heads.train()
        perm = torch.randperm(X.n, generator=g).numpy()
        tot = 0.0
        for i in range(0, X.n, batch_size):
            b = perm[i : i + batch_size]
            rows, local = _bag_rows(starts, counts, b)
            opt.zero_grad()
            logits = segment_max(heads(Xt[rows].to(device)), local, len(b))
            loss = lossf(logits, Y[b].to(device))
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(b)
        heads.eval()
        with torch.no_grad():
            vlogits = region_logits(heads, Xv, device).cpu() if len(Xv) else torch.zeros((0, Yv.shape[-1]))
            vloss = float(lossf(vlogits, Yv)) if len(Xv) else float("nan")
        if progress is not None:
            progress("train", epoch + 1, epochs)
        if on_epoch is not None:
            on_epoch(epoch, tot / max(X.n, 1), vloss, torch.sigmoid(vlogits).numpy(), opt)
    return opt


def train_multilabel(
    data,
    out,
    *,
    epochs=None,
    device="auto",
    backbone=None,
    seed=0,
    resume=None,
    folds=None,
    progress=None,
    log=None,
    input_size: int | None = None,
    lr: float = DEFAULT_LR,
    batch_size: int = 64,
    val_fraction: float = 0.2,
    n_smears: int = 7,
    compose: int | None = None,
    pretrained: bool = True,
    val_data=None,
    smear_shape=(1080, 1920),
    pool: str | None = None,
    crop: str | None = None,
    min_side: int | None = None,
    standardize: bool = True,
    n_val_patches: int | None = None,
    min_cells: int = 2,
    max_cells: int = 4,
    head_batch_size: int = DEFAULT_HEAD_BATCH_SIZE,
    tta: str | None = None,
    split: str | None = None,
    cell_split: dict | None = None,
    splitter: dict | None = None,
    splitter_options: dict | None = None,
    **options,
) -> dict:
    """Train the six heads (+ abnormal model) on cached frozen-backbone features.

    Writes ``out/best.pt`` (best validation exact match) and ``out/last.pt`` (for ``resume``)
    after every epoch. ``folds=k`` first runs k-fold cross-validation (grouped by patient /
    smear when there are enough groups) and reports it under ``metrics["cv"]``.
    ``val_data``: an optional separate validation source instead of a random split.
    ``split="unet"`` (class folders only) first trains the learned cell splitter on the
    training crops (:func:`napari_sickle.training.splitter.train_splitter`, options
    ``splitter_options``); it is stored in the checkpoint with the heads.
    Returns {"checkpoint", "metrics", "history", "seconds"}.
    """
    import torch

    from .._device import resolve_device
    from ..models import multilabel as mlm
    from ..models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from ..models.multilabel import RBCClassifier, new_classifier

    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    epochs = int(epochs or DEFAULT_EPOCHS)
    torch.manual_seed(seed)
    np.random.seed(seed)
    dev = resolve_device(device)
    resumed = None
    if resume is not None:
        if not Path(resume).is_file():
            raise FileNotFoundError(f"--resume: checkpoint {resume} does not exist")
        resumed = load_checkpoint(resume, kind="multilabel")
        rc = resumed["config"]
        backbone, input_size = rc["backbone"], rc["input_size"]
        pool, crop = rc.get("pool", "avg"), rc.get("crop", "stretch")
        min_side, standardize = rc.get("min_side", 0), bool(rc.get("standardize", False))
        tta, split = rc.get("tta", "none"), rc.get("split", "none")
    backbone = backbone or "efficientnet-lite0"
    pool = pool or mlm.DEFAULT_POOL
    crop = crop or mlm.DEFAULT_CROP
    tta = tta or mlm.DEFAULT_TTA
    split = split or mlm.DEFAULT_SPLIT
    if resumed is not None:
        clf = RBCClassifier.from_checkpoint(resumed, device=dev)
    else:
        clf = new_classifier(
            backbone,
            input_size=input_size,
            pretrained=pretrained,
            device=dev,
            pool=pool,
            crop=crop,
            min_side=min_side,
            standardize=bool(standardize),
            tta=tta,
            split=split,
            cell_split=cell_split,
            splitter=splitter,
        )
    input_size = clf.input_size
    emit = log or (lambda d: None)

    folder_data = isinstance(data, (str, Path)) and str(data) != "simulated" and Path(data).is_dir()
    if clf.split == "unet" and not folder_data:
        raise ValueError(
            f"split='unet' trains its cell splitter from single-cell crops, so --data must be a folder "
            f"of class sub-folders; {data} is not. Use split='cells' (the rule-based split) instead."
        )
    if compose is None:
        compose = DEFAULT_COMPOSE if folder_data else 0
    compose = int(compose)
    ps = load_patches(data, seed=seed, n_smears=n_smears, progress=progress, smear_shape=smear_shape)
    if len(ps) < 2:
        from ..io.datasets import DatasetError

        raise DatasetError(f"{data}: only {len(ps)} patch(es); at least 2 are needed to train")
    if val_data is None:
        tr, va = _split(ps, val_fraction, seed)
    splitter_stats = None
    if clf.split == "unet" and not clf.config["splitter"].get("trained"):
        from ..data.compose import load_crops
        from .splitter import fit_classifier_splitter

        names = {Path(ps.names[i]).resolve() for i in (tr if val_data is None else range(len(ps)))}
        splitter_stats = fit_classifier_splitter(
            clf,
            [c for c in load_crops(data) if Path(c.path).resolve() in names],
            seed=seed,
            device=dev,
            progress=progress,
            **(splitter_options or {}),
        )
        emit({"event": "splitter", **splitter_stats})
    feats = compute_features(clf, ps, batch_size=batch_size, progress=progress)
    Y = ps.Y
    emit(
        {
            "event": "data",
            "n": int(len(ps)),
            "skipped": int(ps.skipped),
            "feature_dim": feats.dim,
            "inputs": int(len(feats.owner)),
        }
    )

    metrics: dict[str, Any] = {}
    if folds:
        metrics["cv"] = _cross_validate(
            feats,
            Y,
            np.asarray(ps.groups),
            int(folds),
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            log=emit,
            progress=progress,
        )

    if val_data is not None:
        vps = load_patches(
            val_data, seed=seed + 1, n_smears=max(1, n_smears // 4), progress=progress, smear_shape=smear_shape
        )
        vfeats = compute_features(clf, vps, batch_size=batch_size)
        Xtr, Ytr, Xva, Yva = feats, Y, vfeats, vps.Y
        tr = np.arange(len(ps))
        va = np.arange(0)
    else:
        Xtr, Ytr, Xva, Yva = feats.take(tr), Y[tr], feats.take(va), Y[va]
    n_single_val = len(Yva)
    n_patches = {"train": 0, "val": 0}
    if compose and folder_data:
        # multi-cell patches: training patches from training crops, validation patches from validation crops
        n_val_patches = int(compose // 5 if n_val_patches is None else n_val_patches)
        trp, vap = compose_split_patches(
            data,
            [ps.names[i] for i in tr],
            [ps.names[i] for i in va],
            compose,
            n_val_patches,
            seed=seed,
            min_cells=min_cells,
            max_cells=max_cells,
            progress=progress,
        )
        if trp:
            Xp, Yp = _patch_features(clf, trp, batch_size, progress, "features: training patches")
            Xtr, Ytr = Bags.cat([Xtr, Xp]), np.concatenate([Ytr, Yp])
        if vap:
            Xp, Yp = _patch_features(clf, vap, batch_size, progress, "features: validation patches")
            Xva, Yva = Bags.cat([Xva, Xp]), np.concatenate([Yva, Yp])
        n_patches = {"train": len(trp), "val": len(vap)}
        emit({"event": "data", "composed_train_patches": len(trp), "composed_val_patches": len(vap)})
    if getattr(clf.net.heads, "feat_mean", None) is not None and resumed is None:
        clf.net.heads.set_standardization(Xtr.X)

    recipe = {
        "features": "frozen ImageNet backbone, pooled, cached",
        "backbone": backbone,
        "input_size": input_size,
        "pool": clf.pool,
        "crop": clf.config.get("crop", "stretch"),
        "min_side": clf.config.get("min_side", 0),
        "standardize": bool(clf.config.get("standardize", False)),
        "tta": clf.tta,
        "split": clf.split,
        "cell_split": clf.config.get("cell_split"),
        **({"splitter": splitter_stats} if splitter_stats else {}),
        "aggregation": "largest logit over a region's cells (multiple-instance, train and predict)"
        if clf.split in ("cells", "unet")
        else "one input per region",
        "composed_patches": n_patches,
        "min_cells": min_cells,
        "max_cells": max_cells,
        "selection": "best epoch by validation exact-match accuracy (single cells + composed patches)",
        "optimizer": "Adam",
        "lr": lr,
        "head_batch_size": int(head_batch_size),
        "loss": "BCEWithLogits per type",
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "data": str(data),
        "n_patches": int(len(ps)),
        "val_fraction": val_fraction,
        "abnormal_model": "sklearn GradientBoostingClassifier(n_estimators=100, max_depth=2) on the six outputs",
        "paper_lr": 1e-5,
    }
    clf.recipe = recipe
    history: list[dict] = list(resumed["extra"].get("history", [])) if resumed else []
    best = {"metric": -1.0, "epoch": -1}
    if resumed is not None and (out / "best.pt").is_file():
        best = dict(resumed["extra"].get("best", best))
    start_epoch = int(resumed["extra"].get("epoch", -1)) + 1 if resumed else 0
    opt_state = resumed["extra"].get("optimizer") if resumed else None

    def on_epoch(epoch, loss, vloss, vprobs, opt):
        m = multilabel_metrics(Yva, vprobs)
        metric = m["exact_match_accuracy"] if len(Yva) else None
        if n_patches["val"] and n_single_val:
            m["single_exact_match_accuracy"] = multilabel_metrics(Yva[:n_single_val], vprobs[:n_single_val])[
                "exact_match_accuracy"
            ]
            m["multi_exact_match_accuracy"] = multilabel_metrics(Yva[n_single_val:], vprobs[n_single_val:])[
                "exact_match_accuracy"
            ]
        improved = metric is not None and metric > best["metric"]
        if improved or epoch + 1 == epochs or clf.abnormal_model is None:
            # the abnormal model follows the heads it was fitted on
            clf.abnormal_model = fit_abnormal_model(clf.region_probs(Xtr.X, Xtr.owner, Xtr.n), Ytr, seed=seed)
        m["abnormal_accuracy"] = (
            float(np.mean((clf.abnormal_proba(vprobs) >= 0.5) == _abnormal_truth(Yva))) if len(Yva) else float("nan")
        )
        rec = {
            "event": "epoch",
            "epoch": epoch + 1,
            "epochs": epochs,
            "loss": loss,
            "val_loss": vloss,
            "metric": metric,
            "metric_name": "val_exact_match",
            "mean_auc": m["mean_auc"],
            "exact_match_accuracy": m["exact_match_accuracy"],
            "abnormal_accuracy": m["abnormal_accuracy"],
            **{k: m[k] for k in ("single_exact_match_accuracy", "multi_exact_match_accuracy") if k in m},
        }
        history.append(rec)
        emit(rec)
        clf.metrics = {**{k: v for k, v in m.items()}, "epoch": epoch + 1}
        extra = {"epoch": epoch, "history": history}
        if improved:
            best.update(metric=float(metric), epoch=epoch + 1)
            save_checkpoint(clf.to_checkpoint(extra={**extra, "best": dict(best)}), out / "best.pt")
        save_checkpoint(
            clf.to_checkpoint(extra={**extra, "best": dict(best), "optimizer": opt.state_dict()}), out / "last.pt"
        )

    _train_heads(
        clf.net.heads,
        Xtr,
        Ytr,
        Xva,
        Yva,
        epochs=epochs,
        lr=lr,
        batch_size=int(head_batch_size),
        seed=seed,
        optimizer_state=opt_state,
        start_epoch=start_epoch,
        on_epoch=on_epoch,
        progress=progress,
        device=dev,
    )
    if not (out / "best.pt").is_file():
        raise CheckpointError(f"training wrote no best checkpoint in {out}")
    best_ck = load_checkpoint(out / "best.pt", kind="multilabel")
    metrics.update({"val": best_ck["metrics"], "best_epoch": best["epoch"]})
    return {"checkpoint": str(out / "best.pt"), "metrics": metrics, "history": history, "seconds": time.time() - t0}


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
