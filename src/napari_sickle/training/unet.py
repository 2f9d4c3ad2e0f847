"""Train the segmentation U-Net on image/mask pairs (``python -m napari_sickle.train unet``).

Data: a folder of ``images/<id>.png`` + ``masks/<id>.png`` (or ``*_img``/``*_mask`` pairs;
binary masks, RGB or gray, in which touching cells are separated by thin background lines,
as in BBBC041), or ``"simulated"`` for smears from :func:`napari_sickle.data.simulate.simulate_smear`.
Cells = 4-connected components of the mask. The network learns three classes at the
working scale (``scale``, default 0.25: BBBC041 cells, ~100 px across, become ~25 px): background, cell interior and a one-pixel inner
cell boundary, so touching cells come apart at inference.

Recipe (:class:`~napari_sickle.training.recipes.UNetRecipe`, every setting overridable): per-image channel standardisation, random
crops of ``crop`` px with random rescaling (0.8-1.25), flips and 90° rotations, per-channel
gain/offset jitter and noise; Adam (lr 3e-3, cosine decay), 16 epochs of 20 batches of 8 crops, cross entropy weighted
(1, 1, 3) plus ``dice_weight`` × soft Dice loss of the foreground; ``val_fraction`` of the
images (at least one) held out for validation, scored every ``val_every`` epochs and at the
last; the best validated epoch by mean(foreground Dice, instance F1@0.5) is ``best.pt``.

Border cells (image/mask folders): annotators of BBBC041 omit many cells cut by the image
border. With ``ignore_border`` the border-touching watershed objects that the mask leaves
out are ignored by the loss. ``border_rule`` (default ``"logistic"``) fits on the same
border objects of the training masks which ones annotators keep: a logistic regression over
size, depth into the image and length on the image edge
(:func:`~napari_sickle.models.unet_processing.border_features`), stored in the checkpoint
config as ``border_classifier``; ``"size"`` only the area fraction that best separates
annotated from omitted objects (``border_min_fraction``, always stored); inference drops the
border objects the rule predicts omitted (:func:`border_objects`, :func:`fit_border_classifier`,
:func:`fit_border_fraction`, docs/segmentation.md).
``holdout`` (an int n or a list of file stems) removes images from training *and*
validation altogether, for an independent test; they are listed in the checkpoint recipe.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np

from .._progress import report
from ..models.unet_processing import BORDER_FEATURES, border_features, normalize_image, resize_chw, unet_targets
from .recipes import UNetRecipe

#: the recipe's settings other than epochs/backbone/seed, with their defaults
DEFAULTS = UNetRecipe().options()
BORDER_RULES = ("logistic", "size", "none")
IGNORE = 255
DEFAULT_EPOCHS = UNetRecipe().resolved().epochs


def border_objects(img: np.ndarray, gt: np.ndarray, with_features: bool = False):
    """Watershed objects touching the image border: (ignore mask, [(area / typical area, annotated)])
    and, ``with_features``, also their :func:`~napari_sickle.models.unet_processing.border_features`
    ``X`` (n, 3) and ``annotated`` (n,) for :func:`fit_border_classifier`.

    BBBC041 annotators leave out many cut cells at the image border (mostly the ones of which
    little is visible) but not all. An object is *annotated* when at least half of it lies in
    the ground truth; the unannotated ones become an ignore region for the loss, so the network
    is not taught that a visible cell is background. ``typical`` is the median area of the
    ground-truth cells that do not touch the border.
    """
    from skimage.segmentation import clear_border

    from ..analysis.segmentation import segment_watershed

    inner = np.bincount(clear_border(gt).ravel())[1:]
    inner = inner[inner > 0]
    typical = float(np.median(inner)) if inner.size else 1.0
    ws = segment_watershed(img)
    edge = np.unique(np.concatenate([ws[0], ws[-1], ws[:, 0], ws[:, -1]]))
    edge = edge[edge > 0]
    n = int(ws.max()) + 1
    area = np.bincount(ws.ravel(), minlength=n)
    covered = np.bincount(ws.ravel(), weights=(gt > 0).ravel(), minlength=n)
    ignore = np.zeros(gt.shape, bool)
    records = []
    for k in edge:
        annotated = bool(covered[k] >= 0.5 * area[k])
        records.append((float(area[k]) / typical, annotated))
        if not annotated:
            ignore |= (ws == k) & (gt == 0)
    if not with_features:
        return ignore, records
    ids, X = border_features(ws)
    return ignore, records, X, covered[ids] >= 0.5 * area[ids] if X.shape[0] else np.zeros(0, bool)


def border_rule_mode(value) -> str:
    """``border_rule`` option -> ``"logistic"``, ``"size"`` or ``"none"`` (True -> logistic)."""
    if value is True:
        return "logistic"
    if value in (False, None, "", "none"):
        return "none"
    if value not in BORDER_RULES:
        raise ValueError(f"border_rule must be one of {', '.join(BORDER_RULES)}, not {value!r}")
    return str(value)


def fit_border_classifier(X: np.ndarray, annotated: np.ndarray) -> Optional[dict]:
    """Logistic regression (scikit-learn, default L2) predicting from :func:`border_features`
    whether annotators kept a border-cut cell; None when the examples have one class only."""
    from sklearn.linear_model import LogisticRegression

    X, y = np.asarray(X, float).reshape(-1, 3), np.asarray(annotated, bool)
    if y.size == 0 or y.all() or not y.any():
        return None
    clf = LogisticRegression().fit(X, y)
    return {
        "features": list(BORDER_FEATURES),
        "coef": [float(c) for c in clf.coef_[0]],
        "intercept": float(clf.intercept_[0]),
        "n_examples": int(y.size),
        "train_accuracy": float(clf.score(X, y)),
    }


def fit_border_fraction(records) -> float:
    """The area fraction f that best separates annotated (>= f) from omitted border cells."""
    if not records:
        return 0.0
    a = np.array([r for r, _ in records])
    y = np.array([b for _, b in records])
    cands = np.round(np.arange(0.0, 1.51, 0.05), 2)
    acc = [float(np.mean((a >= f) == y)) for f in cands]
    return float(cands[int(np.argmax(acc))])


def _prepare(img: np.ndarray, inst: np.ndarray, scale: float, ignore: Optional[np.ndarray] = None):
    """Network input (3, h, w) float32 at the working scale and its class targets
    (``IGNORE`` where ``ignore`` is set)."""
    import torch

    from ..io.images import to_rgb_uint8

    rgb = to_rgb_uint8(img)
    H, W = rgb.shape[:2]
    h, w = max(1, round(H * scale)), max(1, round(W * scale))
    x = torch.from_numpy(normalize_image(rgb))
    if (h, w) != (H, W):
        x = resize_chw(x, (h, w))
    t = unet_targets(inst, (h, w))
    if ignore is not None and ignore.any():
        from skimage.transform import resize

        ig = resize(ignore, (h, w), order=0, preserve_range=True, anti_aliasing=False).astype(bool)
        t[ig & (t == 0)] = IGNORE
    return x.numpy(), t


def _load_items(data, r: UNetRecipe):
    """list of (name, image, instances)."""
    from ..analysis.seg_metrics import as_instances

    items = []
    if isinstance(data, str) and data == "simulated":
        from ..data.simulate import simulate_smear

        for k in range(int(r.n_simulated)):
            sm = simulate_smear(seed=r.seed * 1000 + k, shape=tuple(r.simulated_shape))
            items.append((f"simulated-{k}", sm.image, as_instances(sm.instances)))
        return items
    from ..analysis.segmentation import _read_pair, scan_pairs

    for ip, mp in scan_pairs(data):
        img, gt = _read_pair(ip, mp, int(r.gt_min_size))
        items.append((Path(ip).stem, img, gt))
    return items


def split_items(names: list[str], holdout, val_fraction: float, seed: int):
    """Deterministic (train, val, test) index lists; ``holdout`` is a count or list of stems."""
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(names)))
    if isinstance(holdout, (list, tuple)):
        wanted = {str(h) for h in holdout}
        test = [i for i in order if names[i] in wanted]
    else:
        test = order[: int(holdout or 0)]
    rest = [i for i in order if i not in test]
    if len(rest) < 2:
        raise ValueError(f"need at least 2 image/mask pairs for training and validation, found {len(rest)}")
    n_val = max(1, int(round(val_fraction * len(rest))))
    return sorted(rest[n_val:]), sorted(rest[:n_val]), sorted(test)


def _batch(pool, rng, r: UNetRecipe):
    """A random augmented batch (x (B,3,c,c), y (B,c,c)) from prepared (x, t) pairs."""
    import torch
    import torch.nn.functional as F

    c = int(r.crop)
    xs, ys = [], []
    for _ in range(int(r.batch_size)):
        x, t = pool[rng.integers(len(pool))]
        s = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
        cs = int(round(c / s))
        h, w = t.shape
        ph, pw = max(0, cs - h), max(0, cs - w)
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect")
            t = np.pad(t, ((0, ph), (0, pw)), mode="constant")
            h, w = t.shape
        y0, x0 = rng.integers(0, h - cs + 1), rng.integers(0, w - cs + 1)
        xc = torch.from_numpy(np.ascontiguousarray(x[:, y0 : y0 + cs, x0 : x0 + cs]))
        tc = torch.from_numpy(np.ascontiguousarray(t[y0 : y0 + cs, x0 : x0 + cs]))
        if cs != c:
            xc = F.interpolate(xc[None], size=(c, c), mode="bilinear", align_corners=False)[0]
            tc = F.interpolate(tc[None, None].float(), size=(c, c), mode="nearest")[0, 0].to(torch.uint8)
        k = int(rng.integers(4))
        xc, tc = torch.rot90(xc, k, (1, 2)), torch.rot90(tc, k, (0, 1))
        if rng.random() < 0.5:
            xc, tc = xc.flip(2), tc.flip(1)
        gain = torch.from_numpy(rng.uniform(0.75, 1.3, (3, 1, 1)).astype(np.float32))
        off = torch.from_numpy(rng.uniform(-0.3, 0.3, (3, 1, 1)).astype(np.float32))
        xc = xc * gain + off + float(rng.uniform(0, 0.1)) * torch.randn_like(xc)
        xs.append(xc)
        ys.append(tc.long())
    return torch.stack(xs), torch.stack(ys)


def _validate(model, cfg, items, device):
    from ..analysis.seg_metrics import segmentation_metrics
    from ..analysis.segmentation import segment_unet

    model.eval()
    dices, f1s = [], []
    for _, img, gt in items:
        lab = segment_unet(img, (model, cfg), device=device)
        m = segmentation_metrics(lab, gt)
        dices.append(m.dice)
        f1s.append(m.instance_f1_50)
    model.train()
    d, f = float(np.mean(dices)), float(np.mean(f1s))
    return {"val_dice": d, "val_f1_50": f, "metric": (d + f) / 2}


def train_unet(
    data,
    out,
    recipe: Optional[UNetRecipe] = None,
    *,
    device: str = "auto",
    resume=None,
    folds=None,
    progress=None,
    log=None,
    **options,
) -> dict:
    """Train the U-Net; writes ``best.pt`` and ``last.pt`` under ``out`` after every epoch.

    ``recipe``: a :class:`~napari_sickle.training.recipes.UNetRecipe`; keyword ``options``
    (its field names) override it, unknown ones are refused. ``backbone`` and ``folds`` do
    not apply to the U-Net (a non-None value is an error).
    Returns {"checkpoint", "metrics", "history", "seconds"}.
    """
    from . import distributed as ddp_glue

    t_start = time.perf_counter()
    recipe = UNetRecipe.build(recipe, options)
    if folds not in (None, 0, 1):
        raise ValueError("cross-validation (--folds) is not available for the U-Net")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = _load(data, recipe, resume=resume, device=device, progress=progress)
    _setup(run)
    for epoch in range(run.start_epoch, run.epochs):
        losses = _train_one_epoch(run, epoch, progress)
        r = run.recipe
        if (epoch + 1) % max(1, int(r.val_every)) and epoch + 1 < run.epochs:
            val = {"val_dice": None, "val_f1_50": None, "metric": -1.0}  # not validated this epoch
        else:
            val = ddp_glue.sharded_mean(lambda its: _validate(run.model, run.cfg, its, run.dev), run.val_items)
        rec = {
            "event": "epoch",
            "epoch": epoch + 1,
            "epochs": run.epochs,
            "loss": ddp_glue.reduce_mean(float(np.sum(losses)), len(losses)),
            **val,
            "metric_name": "mean(val_dice, val_f1_50)",
            "lr": float(run.optim.param_groups[0]["lr"]),
            "seconds": time.perf_counter() - t_start,
        }
        run.history.append(rec)
        if log is not None:
            log(json.loads(json.dumps(rec)))
        _save(run, out, epoch, val)
    return {
        "checkpoint": str(out / "best.pt"),
        "metrics": run.metrics,
        "history": run.history,
        "seconds": time.perf_counter() - t_start,
    }


def _load(data, recipe: UNetRecipe, *, resume, device, progress) -> SimpleNamespace:
    """The recipe (a resumed run keeps its stored one), the images, the train/val/test split,
    the training images prepared at the working scale (with the border cells the annotators
    left out ignored) and the fitted border rule."""
    import torch

    from .._device import resolve_device
    from ..models.checkpoint import load_checkpoint

    r = recipe.resolved()
    r = r.replace(border_rule=border_rule_mode(r.border_rule))
    if r.num_threads:
        torch.set_num_threads(int(r.num_threads))
    dev = resolve_device(device)
    state = None
    if resume is not None:
        rp = Path(resume)
        if not rp.is_file():
            raise FileNotFoundError(f"--resume: checkpoint {rp} does not exist")
        state = load_checkpoint(rp, kind="unet")
        stored = state["recipe"].get("options", {})
        r = r.replace(**{k: v for k, v in stored.items() if k in UNetRecipe.option_keys()})
        if r.border_rule is True:  # recipes before the logistic rule: True meant the size rule
            r = r.replace(border_rule="size")
        r = r.replace(seed=int(state["recipe"].get("seed", r.seed)))
    r = r.replace(border_rule=border_rule_mode(r.border_rule))  # also after resume (old recipes: True/False)
    report(progress, "loading data", 0, 1)
    items = _load_items(data, r)
    names = [n for n, _, _ in items]
    tr, va, te = split_items(names, r.holdout, float(r.val_fraction), r.seed)
    scale = float(r.scale)
    rule = r.border_rule
    no_border = (None, [], np.zeros((0, 3)), np.zeros(0, bool))
    border = (
        [border_objects(items[i][1], items[i][2], with_features=True) for i in tr]
        if (r.ignore_border or rule != "none") and data != "simulated"
        else [no_border] * len(tr)
    )
    pool = [_prepare(items[i][1], items[i][2], scale, b[0] if r.ignore_border else None) for i, b in zip(tr, border)]
    border_fraction = fit_border_fraction([x for b in border for x in b[1]]) if rule != "none" else 0.0
    border_classifier = (
        fit_border_classifier(np.concatenate([b[2] for b in border]), np.concatenate([b[3] for b in border]))
        if rule == "logistic"
        else None
    )
    report(progress, "loading data", 1, 1)
    return SimpleNamespace(
        recipe=r,
        data=data,
        dev=dev,
        state=state,
        names=names,
        split=(tr, va, te),
        pool=pool,
        val_items=[items[i] for i in va],
        border_fraction=border_fraction,
        border_classifier=border_classifier,
    )


def _setup(run: SimpleNamespace) -> None:
    """Network, optimiser, cosine schedule, loss, the recorded recipe and the state of a
    resumed run."""
    import torch

    from ..models.unet import CLASS_NAMES, build_unet
    from . import distributed as ddp_glue

    r, state = run.recipe, run.state
    run.cfg = cfg = {
        "depth": int(r.depth),
        "base_channels": int(r.base_channels),
        "in_channels": 3,
        "n_classes": 3,
        "class_names": list(CLASS_NAMES),
        "scale": float(r.scale),
        "normalization": "per_image",
        "border_min_fraction": run.border_fraction,
        "border_classifier": run.border_classifier,
    }
    epochs = int(r.epochs)
    torch.manual_seed(r.seed)
    run.model = build_unet(cfg).to(run.dev)
    run.optim = torch.optim.Adam(run.model.parameters(), lr=float(r.lr), weight_decay=float(r.weight_decay))
    run.sched = torch.optim.lr_scheduler.CosineAnnealingLR(run.optim, T_max=epochs, eta_min=float(r.lr) * 0.02)
    tr, va, te = run.split
    run.record = {
        "data": str(run.data),
        "seed": int(r.seed),
        "epochs": epochs,
        "optimizer": "Adam",
        "loss": "weighted cross entropy" + (" + soft Dice of the foreground" if r.dice_weight else ""),
        "ignore": "unannotated border cells" if r.ignore_border else "none",
        "augmentations": "random crop + rescale 0.8-1.25, flips, rot90, channel gain/offset, noise",
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in r.options().items()},
        "train_images": [run.names[i] for i in tr],
        "val_images": [run.names[i] for i in va],
        "test_images": [run.names[i] for i in te],
    }
    run.history, run.best, run.start_epoch = [], -1.0, 0
    if state is not None:
        run.model.load_state_dict(state["state_dict"])
        ex = state["extra"]
        run.optim.load_state_dict(ex["optimizer"])
        run.sched.load_state_dict(ex["scheduler"])
        run.start_epoch = int(ex["epoch"])
        run.history = [dict(h) for h in ex.get("history", [])]
        run.best = float(ex.get("best_metric", -1.0))
        epochs = max(epochs, int(state["recipe"].get("epochs", epochs)))
        run.record["epochs"] = epochs
    run.epochs = epochs
    cfg["recipe"] = r.replace(epochs=epochs).asdict()
    run.loss_fn = _loss_fn(r, run.dev)
    run.train_model = ddp_glue.wrap(run.model)  # DDP under torchrun (SyncBatchNorm on CUDA), else the model itself
    run.model.train()
    run.metrics = run.history[-1] if run.history else {}


def _loss_fn(r: UNetRecipe, dev):
    """Weighted cross entropy (ignoring ``IGNORE`` pixels) plus ``dice_weight`` x soft Dice of
    the foreground."""
    import torch

    weights = torch.tensor(r.class_weights, dtype=torch.float32, device=dev)
    ce = torch.nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE)
    dice_w = float(r.dice_weight)

    def loss_fn(logits, y):
        loss = ce(logits, y)
        if dice_w:
            valid = (y != IGNORE).float()
            p_fg = (1.0 - torch.softmax(logits, dim=1)[:, 0]) * valid
            t_fg = ((y == 1) | (y == 2)).float() * valid
            loss = loss + dice_w * (1.0 - (2 * (p_fg * t_fg).sum() + 1.0) / (p_fg.sum() + t_fg.sum() + 1.0))
        return loss

    return loss_fn


def _train_one_epoch(run: SimpleNamespace, epoch: int, progress) -> list[float]:
    """``steps_per_epoch`` optimiser steps on random augmented crops (under torchrun each sees
    batch_size x world crops), then a schedule step; returns the step losses."""
    import torch

    from .._device import autocast
    from . import distributed as ddp_glue

    r, dev = run.recipe, run.dev
    rng = np.random.default_rng([r.seed, epoch] + ([ddp_glue.rank()] if ddp_glue.world_size() > 1 else []))
    torch.manual_seed(r.seed * 100003 + epoch)
    steps = int(r.steps_per_epoch)
    losses = []
    for s in range(steps):
        x, y = _batch(run.pool, rng, r)
        x, y = x.to(dev), y.to(dev)
        with autocast(dev):
            loss = run.loss_fn(run.train_model(x).float(), y)
        run.optim.zero_grad(set_to_none=True)
        loss.backward()
        run.optim.step()
        losses.append(float(loss.detach()))
        ddp_glue.note_step(len(x))
        report(progress, f"epoch {epoch + 1}/{run.epochs}", s + 1, steps)
    run.sched.step()
    return losses


def _save(run: SimpleNamespace, out: Path, epoch: int, val: dict) -> None:
    """best.pt when the validated metric improved, last.pt (optimiser and schedule for
    ``resume``) every epoch; rank 0 only."""
    from ..models.checkpoint import make_checkpoint, save_checkpoint
    from . import distributed as ddp_glue

    cfg = run.cfg
    arch = f"unet-d{cfg['depth']}-c{cfg['base_channels']}"
    sd = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
    m = {"val_dice": val["val_dice"], "val_f1_50": val["val_f1_50"], "metric": val["metric"], "epoch": epoch + 1}
    if val["metric"] > run.best:
        run.best = val["metric"]
        run.metrics = m
        if ddp_glue.is_main():
            save_checkpoint(make_checkpoint("unet", arch, sd, cfg, run.record, m), out / "best.pt")
    extra = {
        "optimizer": run.optim.state_dict(),
        "scheduler": run.sched.state_dict(),
        "epoch": epoch + 1,
        "history": run.history,
        "best_metric": run.best,
    }
    if ddp_glue.is_main():
        save_checkpoint(make_checkpoint("unet", arch, sd, cfg, run.record, m, extra), out / "last.pt")


def evaluate_unet_checkpoint(model, data, device="auto", **kwargs) -> dict:
    """Watershed vs U-Net on ``data``; the same numbers as ``evaluate segmentation``."""
    from ..analysis.segmentation import evaluate_segmentation

    return evaluate_segmentation(data, unet_model=model, device=device, **kwargs)
