"""Train the segmentation U-Net on image/mask pairs (``python -m napari_sickle.train unet``).

Data: a folder of ``images/<id>.png`` + ``masks/<id>.png`` (or ``*_img``/``*_mask`` pairs;
binary masks, RGB or gray, in which touching cells are separated by thin background lines,
as in BBBC041), or ``"simulated"`` for smears from :func:`napari_sickle.data.simulate.simulate_smear`.
Cells = 4-connected components of the mask. The network learns three classes at the
working scale (``scale``, default 0.25: BBBC041 cells, ~100 px across, become ~25 px): background, cell interior and a one-pixel inner
cell boundary, so touching cells come apart at inference.

Recipe (all overridable through ``**options``): per-image channel standardisation, random
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
from typing import Optional

import numpy as np

from .._progress import report
from ..models.unet_processing import BORDER_FEATURES, border_features, normalize_image, resize_chw, unet_targets

DEFAULTS = dict(
    depth=3,
    base_channels=16,
    scale=0.25,
    crop=128,
    batch_size=8,
    steps_per_epoch=20,
    lr=3e-3,
    weight_decay=1e-4,
    class_weights=(1.0, 1.0, 3.0),
    val_fraction=0.11,
    holdout=0,
    n_simulated=8,
    simulated_shape=(540, 960),
    gt_min_size=30,
    num_threads=None,
    dice_weight=1.0,
    ignore_border=True,
    border_rule="logistic",
    val_every=4,
)
BORDER_RULES = ("logistic", "size", "none")
IGNORE = 255
DEFAULT_EPOCHS = 16


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


def _load_items(data, opts, seed):
    """list of (name, image, instances)."""
    from ..analysis.seg_metrics import as_instances

    items = []
    if isinstance(data, str) and data == "simulated":
        from ..data.simulate import simulate_smear

        for k in range(int(opts["n_simulated"])):
            sm = simulate_smear(seed=seed * 1000 + k, shape=tuple(opts["simulated_shape"]))
            items.append((f"simulated-{k}", sm.image, as_instances(sm.instances)))
        return items
    from ..analysis.segmentation import _read_pair, scan_pairs

    for ip, mp in scan_pairs(data):
        img, gt = _read_pair(ip, mp, int(opts["gt_min_size"]))
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


def _batch(pool, rng, opts):
    """A random augmented batch (x (B,3,c,c), y (B,c,c)) from prepared (x, t) pairs."""
    import torch
    import torch.nn.functional as F

    c = int(opts["crop"])
    xs, ys = [], []
    for _ in range(int(opts["batch_size"])):
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
    *,
    epochs: Optional[int] = None,
    device: str = "auto",
    backbone=None,
    seed: int = 0,
    resume=None,
    folds=None,
    progress=None,
    log=None,
    **options,
) -> dict:
    """Train the U-Net; writes ``best.pt`` and ``last.pt`` under ``out`` after every epoch.

    ``backbone`` and ``folds`` do not apply to the U-Net (a non-None value is an error).
    Returns {"checkpoint", "metrics", "history", "seconds"}.
    """
    import torch

    from .._device import autocast, resolve_device
    from ..models.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
    from ..models.unet import CLASS_NAMES, build_unet
    from . import distributed as ddp_glue

    t_start = time.perf_counter()
    if backbone not in (None, "", "unet"):
        raise ValueError(f"the U-Net has no selectable backbone (got {backbone!r}); leave --backbone out")
    if folds not in (None, 0, 1):
        raise ValueError("cross-validation (--folds) is not available for the U-Net")
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown U-Net training option(s): {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **options}
    opts["border_rule"] = border_rule_mode(opts["border_rule"])
    if opts["num_threads"]:
        torch.set_num_threads(int(opts["num_threads"]))
    epochs = int(epochs or DEFAULT_EPOCHS)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)

    state = None
    if resume is not None:
        rp = Path(resume)
        if not rp.is_file():
            raise FileNotFoundError(f"--resume: checkpoint {rp} does not exist")
        state = load_checkpoint(rp, kind="unet")
        opts = {**opts, **{k: v for k, v in state["recipe"].get("options", {}).items() if k in DEFAULTS}}
        if opts["border_rule"] is True:  # recipes before the logistic rule: True meant the size rule
            opts["border_rule"] = "size"
        seed = int(state["recipe"].get("seed", seed))

    opts["border_rule"] = border_rule_mode(opts["border_rule"])  # also after resume (old recipes: True/False)
    report(progress, "loading data", 0, 1)
    items = _load_items(data, opts, seed)
    names = [n for n, _, _ in items]
    tr, va, te = split_items(names, opts["holdout"], float(opts["val_fraction"]), seed)
    scale = float(opts["scale"])
    rule = opts["border_rule"]
    no_border = (None, [], np.zeros((0, 3)), np.zeros(0, bool))
    border = (
        [border_objects(items[i][1], items[i][2], with_features=True) for i in tr]
        if (opts["ignore_border"] or rule != "none") and data != "simulated"
        else [no_border] * len(tr)
    )
    pool = [
        _prepare(items[i][1], items[i][2], scale, b[0] if opts["ignore_border"] else None) for i, b in zip(tr, border)
    ]
    border_fraction = fit_border_fraction([r for b in border for r in b[1]]) if rule != "none" else 0.0
    border_classifier = (
        fit_border_classifier(np.concatenate([b[2] for b in border]), np.concatenate([b[3] for b in border]))
        if rule == "logistic"
        else None
    )
    val_items = [items[i] for i in va]
    report(progress, "loading data", 1, 1)

    cfg = {
        "depth": int(opts["depth"]),
        "base_channels": int(opts["base_channels"]),
        "in_channels": 3,
        "n_classes": 3,
        "class_names": list(CLASS_NAMES),
        "scale": scale,
        "normalization": "per_image",
        "border_min_fraction": border_fraction,
        "border_classifier": border_classifier,
    }
    torch.manual_seed(seed)
    model = build_unet(cfg).to(dev)
    optim = torch.optim.Adam(model.parameters(), lr=float(opts["lr"]), weight_decay=float(opts["weight_decay"]))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=epochs, eta_min=float(opts["lr"]) * 0.02)
    recipe = {
        "data": str(data),
        "seed": int(seed),
        "epochs": epochs,
        "optimizer": "Adam",
        "loss": "weighted cross entropy" + (" + soft Dice of the foreground" if opts["dice_weight"] else ""),
        "ignore": "unannotated border cells" if opts["ignore_border"] else "none",
        "augmentations": "random crop + rescale 0.8-1.25, flips, rot90, channel gain/offset, noise",
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.items()},
        "train_images": [names[i] for i in tr],
        "val_images": [names[i] for i in va],
        "test_images": [names[i] for i in te],
    }
    history: list[dict] = []
    best = -1.0
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["state_dict"])
        ex = state["extra"]
        optim.load_state_dict(ex["optimizer"])
        sched.load_state_dict(ex["scheduler"])
        start_epoch = int(ex["epoch"])
        history = [dict(h) for h in ex.get("history", [])]
        best = float(ex.get("best_metric", -1.0))
        epochs = max(epochs, int(state["recipe"].get("epochs", epochs)))
        recipe["epochs"] = epochs

    weights = torch.tensor(opts["class_weights"], dtype=torch.float32, device=dev)
    ce = torch.nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE)
    dice_w = float(opts["dice_weight"])

    def loss_fn(logits, y):
        loss = ce(logits, y)
        if dice_w:
            valid = (y != IGNORE).float()
            p_fg = (1.0 - torch.softmax(logits, dim=1)[:, 0]) * valid
            t_fg = ((y == 1) | (y == 2)).float() * valid
            loss = loss + dice_w * (1.0 - (2 * (p_fg * t_fg).sum() + 1.0) / (p_fg.sum() + t_fg.sum() + 1.0))
        return loss

    steps = int(opts["steps_per_epoch"])  # optimizer steps; under torchrun each sees batch_size x world crops
    train_model = ddp_glue.wrap(model)  # DDP under torchrun (SyncBatchNorm on CUDA), else the model itself
    model.train()
    best_path, last_path = out / "best.pt", out / "last.pt"
    metrics: dict = history[-1] if history else {}
    for epoch in range(start_epoch, epochs):
        rng = np.random.default_rng([seed, epoch] + ([ddp_glue.rank()] if ddp_glue.world_size() > 1 else []))
        torch.manual_seed(seed * 100003 + epoch)
        losses = []
        for s in range(steps):
            x, y = _batch(pool, rng, opts)
            x, y = x.to(dev), y.to(dev)
            with autocast(dev):
                loss = loss_fn(train_model(x).float(), y)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            losses.append(float(loss.detach()))
            ddp_glue.note_step(len(x))
            report(progress, f"epoch {epoch + 1}/{epochs}", s + 1, steps)
        sched.step()
        every = max(1, int(opts["val_every"]))
        if (epoch + 1) % every and epoch + 1 < epochs:
            val = {"val_dice": None, "val_f1_50": None, "metric": -1.0}  # not validated this epoch
        else:
            val = ddp_glue.sharded_mean(lambda its: _validate(model, cfg, its, dev), val_items)
        rec = {
            "event": "epoch",
            "epoch": epoch + 1,
            "epochs": epochs,
            "loss": ddp_glue.reduce_mean(float(np.sum(losses)), len(losses)),
            **val,
            "metric_name": "mean(val_dice, val_f1_50)",
            "lr": float(optim.param_groups[0]["lr"]),
            "seconds": time.perf_counter() - t_start,
        }
        history.append(rec)
        if log is not None:
            log(json.loads(json.dumps(rec)))
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        m = {"val_dice": val["val_dice"], "val_f1_50": val["val_f1_50"], "metric": val["metric"], "epoch": epoch + 1}
        if val["metric"] > best:
            best = val["metric"]
            metrics = m
            if ddp_glue.is_main():
                save_checkpoint(
                    make_checkpoint("unet", f"unet-d{cfg['depth']}-c{cfg['base_channels']}", sd, cfg, recipe, m),
                    best_path,
                )
        extra = {
            "optimizer": optim.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": epoch + 1,
            "history": history,
            "best_metric": best,
        }
        if ddp_glue.is_main():
            save_checkpoint(
                make_checkpoint("unet", f"unet-d{cfg['depth']}-c{cfg['base_channels']}", sd, cfg, recipe, m, extra),
                last_path,
            )
    return {
        "checkpoint": str(best_path),
        "metrics": metrics,
        "history": history,
        "seconds": time.perf_counter() - t_start,
    }


def evaluate_unet_checkpoint(model, data, device="auto", **kwargs) -> dict:
    """Watershed vs U-Net on ``data``; the same numbers as ``evaluate segmentation``."""
    from ..analysis.segmentation import evaluate_segmentation

    return evaluate_segmentation(data, unet_model=model, device=device, **kwargs)
