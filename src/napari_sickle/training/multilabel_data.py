"""Data of the multi-label trainer: patch sets from every supported source, their features
as bags of network inputs per region, composed multi-cell patches and the train/validation
split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..constants import ABNORMAL_TYPES, RBC_TYPES, XU_FOLDER_TO_TYPE


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
        if (owner < 0).any():  # training reads each cell as visible: drop the occlusion rule's completed cells
            keep = owner >= 0
            crops, owner = crops[torch.from_numpy(keep).to(crops.device)], owner[keep]
        pending.append(crops.cpu())
        owners.append(owner + n_boxes)
        n_boxes += len(boxes)
        if sum(len(p) for p in pending) >= batch_size:
            flush()
    flush()
    if not feats:
        return Bags(np.zeros((0, 1), np.float32), np.zeros(0, np.int64), 0)
    return Bags(np.concatenate(feats), np.concatenate(owners), n_boxes)


def _abnormal_truth(y: np.ndarray) -> np.ndarray:
    idx = [RBC_TYPES.index(t) for t in ABNORMAL_TYPES]
    return (np.asarray(y)[:, idx].max(axis=1) > 0).astype(int)


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
