"""Default six-type classifier for real smears: fine-tuned on real cells, small and fast.

Recipe (recorded in the checkpoint's ``recipe``):

* data (:mod:`napari_sickle.data.real_cells`): Xu et al. single crops (training patients),
  Chula RBC-12 single cells of the five mapped classes (training images; Oval/Disc
  subsampled), multi-cell patches composed from those training cells with two placement /
  blending models (:func:`~napari_sickle.data.compose.compose_patches` at 10-40% allowed
  overlap, :func:`~napari_sickle.data.compose.compose_occluded` with >= 60% of every cell
  visible), Xu and Chula cells composed separately;
* every region goes through the inference path of :class:`RBCClassifier`: split into cells,
  each cell centred on a ``min_side`` canvas, resized to ``input_size``; those canvases are
  computed once (:func:`prepare`) and cached. The split (``SPLIT``) is the rule-based one;
  ``prepare --split unet`` first trains the learned splitter
  (:mod:`napari_sickle.models.splitter`, :mod:`.real_splitter`) on patches composed from the
  training cells, occluded ones included, and splits with it; ``attach-splitter`` gives an
  already trained classifier that splitter and, with ``--occlusion ellipse-min``, the occlusion
  rule of :mod:`napari_sickle.models.occlusion`, and ``attach-stain`` the stain reference of
  :mod:`.stain_reference` (how the classifier of the shipped ``rbc-real-v6`` is built);
* the efficientnet-lite0 backbone (ImageNet, offline weights) is fine-tuned from block 2 on,
  with the six heads, on the canvases with random d4 symmetries, stain/colour jitter and
  grayscale conversion (:mod:`.canvas_augment`); a region's logits are the largest over its
  cells (the same multiple-instance rule as in prediction); regions are drawn with weights
  that balance the types;
* the gradient-boosting abnormal model is fitted on the six outputs of the training regions.

Everything runs on the CPU in resumable pieces: ``prepare`` (cache), ``train`` (one
checkpoint per epoch; ``--epochs`` more on ``--resume``), ``finish`` (abnormal model,
classifier checkpoint). Command line: ``python -m napari_sickle.training.real_classifier``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .canvas_augment import AUGMENT, augment_batch
from .real_splitter import SPLITTER_NET, attach_splitter, fit_splitter, splitter_recipe

INPUT_SIZE = 64
MIN_SIDE = 72
BACKBONE = "efficientnet-lite0"
#: efficientnet-lite0 blocks below this index stay frozen (with the stem)
FREEZE_BLOCKS = 2
#: how regions are split into cells: "unet" (learned splitter) or "cells" (rule-based)
SPLIT = "cells"
DEFAULTS = dict(
    n_chula_oval=2500,
    n_xu_patches=1500,
    n_xu_occluded=900,
    n_chula_patches=900,
    n_chula_occluded=500,
    n_val_patches=300,
)


def _canvases(clf, image) -> np.ndarray:
    """uint8 canvases (k, 3, S, S) of the cells of a whole-image region, as ``clf`` sees them."""
    import torch

    from ..models.cells import cell_canvases
    from ..models.multilabel import canvas_tensor

    h, w = image.shape[:2]
    m = torch.zeros(3, 1, 1)
    s = torch.full((3, 1, 1), 1 / 255.0)
    cv = cell_canvases(
        image, [0, 0, w, h], int(clf.config["min_side"]), clf.config.get("cell_split"), splitter=clf.splitter_fn()
    )
    return np.stack([canvas_tensor(c, clf.input_size, m, s).round().clamp(0, 255).byte().numpy() for c in cv])


class RegionSet:
    """Regions as cell canvases: ``X`` (M, 3, S, S) uint8, ``owner`` (M,), ``Y`` (n, 6),
    ``source`` (n,) str, ``kind`` (n,) str ('single' / 'patch' / 'occluded')."""

    def __init__(self):
        self.parts, self.owner, self.Y, self.source, self.kind, self.n = [], [], [], [], [], 0

    def add(self, canv, y, source, kind):
        self.parts.append(canv)
        self.owner.append(np.full(len(canv), self.n, np.int64))
        self.Y.append(np.asarray(y, np.float32))
        self.source.append(source)
        self.kind.append(kind)
        self.n += 1

    def arrays(self) -> dict:
        return {
            "X": np.concatenate(self.parts),
            "owner": np.concatenate(self.owner),
            "Y": np.stack(self.Y),
            "source": np.asarray(self.source),
            "kind": np.asarray(self.kind),
        }


def prepare(sickle_root, chula_root, cache, *, seed: int = 0, split: str = SPLIT, log=print, **counts) -> dict:
    """Build and cache (``cache/train.npz``, ``cache/val.npz``) the training and validation
    regions as cell canvases, after training the learned splitter (``cache/splitter.pt``) when
    ``split="unet"``. Returns the counts."""
    from ..data.real_cells import chula_cells, xu_cells

    c = {**DEFAULTS, **counts}
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    clf = _new_clf(pretrained=False, split=split)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    xu = xu_cells(sickle_root)
    log(f"xu cells {len(xu)} ({time.time() - t0:.0f}s)")
    ch = chula_cells(chula_root, mapped_only=True)
    log(f"chula mapped cells {len(ch)} ({time.time() - t0:.0f}s)")
    info = {}
    if split == "unet":
        info["splitter"] = fit_splitter(clf, xu, ch, cache, seed)
        log(f"splitter {info['splitter']} ({time.time() - t0:.0f}s)")
    for split in ("train", "val"):
        rs = _split_regions(split, xu, ch, clf, rng, c, seed)
        arr = rs.arrays()
        np.savez(cache / f"{split}.npz", **arr)
        info[split] = {
            "regions": int(rs.n),
            "cells": int(len(arr["X"])),
            "by": {
                f"{s}/{k}": int(((arr["source"] == s) & (arr["kind"] == k)).sum())
                for s in ("xu", "chula")
                for k in ("single", "patch", "occluded")
            },
        }
        log(f"{split}: {info[split]} ({time.time() - t0:.0f}s)")
    info["config"] = dict(clf.config)
    (cache / "prepare.json").write_text(json.dumps(info, indent=1))
    return info


def _split_regions(split: str, xu, ch, clf, rng, c: dict, seed: int) -> "RegionSet":
    """The single cells of ``split`` (Chula Oval/Disc subsampled for training) and the patches
    composed from them, as canvases."""
    from ..data.real_cells import to_crops

    rs = RegionSet()
    xs = [x for x in xu if x.split == split]
    cs = [x for x in ch if x.split == split]
    if split == "train":  # Oval/Disc is most of Chula: keep a subsample of it
        oval = [x for x in cs if x.y[0] == 1]
        other = [x for x in cs if x.y[0] != 1]
        keep = rng.choice(len(oval), size=min(len(oval), int(c["n_chula_oval"])), replace=False)
        cs = other + [oval[i] for i in sorted(keep)]
    for x in xs:
        rs.add(_canvases(clf, x.image), x.y, "xu", "single")
    for x in cs:
        rs.add(_canvases(clf, x.image), x.y, "chula", "single")
    s0 = seed * 100 + (0 if split == "train" else 50)
    for src, kind, pats in _compose_jobs(split, to_crops(xs), to_crops(cs), c, s0):
        for img, types, _n in pats:
            rs.add(_canvases(clf, img), types, src, kind)
    return rs


def _compose_jobs(split: str, xc, cc, c: dict, s0: int) -> list:
    """(source, kind, composed patches): for training, Xu and Chula patches at three allowed
    overlaps and occluded patches; for validation, Xu patches and occluded patches."""
    from ..data.compose import compose_occluded, compose_patches

    if split != "train":
        return [
            ("xu", "patch", compose_patches(xc, int(c["n_val_patches"]), seed=s0, min_cells=2)),
            ("xu", "occluded", compose_occluded(xc, int(c["n_val_patches"]), seed=s0 + 1)),
        ]
    jobs = []
    for j, ov in enumerate((0.1, 0.25, 0.4)):
        jobs.append(
            ("xu", "patch", compose_patches(xc, int(c["n_xu_patches"]) // 3, seed=s0 + j, min_cells=2, max_overlap=ov))
        )
        jobs.append(
            (
                "chula",
                "patch",
                compose_patches(cc, int(c["n_chula_patches"]) // 3, seed=s0 + 10 + j, min_cells=2, max_overlap=ov),
            )
        )
    jobs.append(("xu", "occluded", compose_occluded(xc, int(c["n_xu_occluded"]), seed=s0 + 20)))
    jobs.append(("chula", "occluded", compose_occluded(cc, int(c["n_chula_occluded"]), seed=s0 + 21)))
    return jobs


# ------------------------------------------------------------------------------------------
# batches (augmentation: canvas_augment.py)
# ------------------------------------------------------------------------------------------
def _normalise(x, clf):
    import torch

    m = torch.as_tensor(clf.config["mean"]).view(1, 3, 1, 1) * 255.0
    s = torch.as_tensor(clf.config["std"]).view(1, 3, 1, 1) * 255.0
    return (x - m) / s


def _load(cache, split):
    d = np.load(Path(cache) / f"{split}.npz")
    return {k: d[k] for k in d.files}


def _rows(owner_starts, counts, regions):
    c = counts[regions]
    local = np.repeat(np.arange(len(regions)), c)
    rows = np.repeat(owner_starts[regions], c) + (np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c))
    return rows, local


def region_probs(clf, data, batch_cells: int = 256):
    """Per-region probabilities (n, 6) of cached canvases (eval mode, the checkpoint's views)."""
    import torch

    from ..models.multilabel import pooled_features, segment_max, tta_views

    net = clf.net.eval()
    X = torch.as_tensor(data["X"])
    out = []
    with torch.inference_mode():
        for i in range(0, len(X), batch_cells):
            x = _normalise(X[i : i + batch_cells].float(), clf)
            views = tta_views(x, clf.tta)
            f = pooled_features(net.backbone, torch.cat(views), clf.pool)
            logits = net.heads(f.reshape(len(views), len(x), -1).transpose(0, 1) if len(views) > 1 else f)
            out.append(logits)
    logits = torch.cat(out)
    n = int(len(data["Y"]))
    return torch.sigmoid(segment_max(logits, data["owner"], n)).numpy()


def exact_match(probs, y):
    return float(np.mean(np.all((probs >= 0.5) == (y >= 0.5), axis=1)))


def _new_clf(pretrained=True, split: str = SPLIT, cache: Path | None = None):
    """A fresh classifier of this recipe; with ``cache``, the split of that cache's ``prepare``
    (and its trained splitter)."""
    from ..models.multilabel import new_classifier

    if cache is not None:  # a cache made before the learned split existed has no config: rule-based
        prep = Path(cache) / "prepare.json"
        split = json.loads(prep.read_text()).get("config", {}).get("split", "cells") if prep.is_file() else "cells"
    clf = new_classifier(
        BACKBONE,
        input_size=INPUT_SIZE,
        min_side=MIN_SIDE,
        pretrained=pretrained,
        pool="avg",
        standardize=False,
        tta="none",
        split=split,
        splitter=SPLITTER_NET if split == "unet" else None,
    )
    if split == "unet" and cache is not None:
        import torch

        clf.net.splitter.load_state_dict(torch.load(Path(cache) / "splitter.pt", map_location="cpu", weights_only=True))
        clf.config["splitter"]["trained"] = True
    return clf


def _trainable(clf):
    bb = clf.net.backbone
    frozen = [bb.conv_stem, bb.bn1] + [bb.blocks[i] for i in range(FREEZE_BLOCKS)]
    if getattr(clf.net, "splitter", None) is not None:  # trained before the canvases were made
        frozen.append(clf.net.splitter)
    for mod in frozen:
        for p in mod.parameters():
            p.requires_grad_(False)
    for p in list(bb.blocks[FREEZE_BLOCKS:].parameters()) + list(bb.conv_head.parameters()) + list(bb.bn2.parameters()):
        p.requires_grad_(True)
    return frozen


def train(
    cache,
    *,
    epochs: int = 4,
    resume: bool = False,
    seed: int = 0,
    lr: float = 1e-3,
    regions_per_epoch: int = 7000,
    batch_regions: int = 96,
    total_epochs: int | None = None,
    threads: int = 2,
    init=None,
    augment: dict | None = None,
    log=print,
) -> dict:
    """Fine-tune for ``epochs`` epochs (continuing ``cache/state.pt`` with ``resume``); the
    learning rate follows a cosine over ``total_epochs`` (default: ``epochs``). ``init``: start
    from the network of another ``state.pt`` (a new schedule, e.g. a second cosine cycle).
    ``augment``: :func:`augment_batch`'s ``blur_p`` / ``blur_sigma`` / ``min_gain`` / ``zoom`` (default
    :data:`AUGMENT`; a resumed run keeps its own)."""
    import torch

    torch.set_num_threads(threads)
    cache = Path(cache)
    run = _load_run(
        cache, epochs=epochs, resume=resume, seed=seed, lr=lr, total_epochs=total_epochs, init=init, augment=augment
    )
    end = min(run.total, run.start + int(epochs))
    for epoch in range(run.start, end):
        t0 = time.time()
        n_drawn, tot = _train_one_epoch(run, epoch, lr, regions_per_epoch, batch_regions)
        vm = _validate(run.clf, run.va)
        run.hist.append(
            {
                "epoch": epoch + 1,
                "lr": lr,
                "loss": tot / n_drawn,
                "val_exact": vm,
                "seconds": round(time.time() - t0, 1),
            }
        )
        log(json.dumps(run.hist[-1]))
        torch.save(
            {
                "net": run.clf.net.state_dict(),
                "opt": run.opt.state_dict(),
                "epoch": epoch + 1,
                "history": run.hist,
                "total_epochs": run.total,
                "seed": seed,
                "lr": lr,
                "regions_per_epoch": regions_per_epoch,
                "batch_regions": batch_regions,
                "init": None if run.init is None else str(run.init),
                "cycles": 1 + (run.init is not None),
                "augment": run.augment,
            },
            cache / "state.pt",
        )
    return {"history": run.hist}


def _load_run(cache: Path, *, epochs, resume, seed, lr, total_epochs, init, augment=None):
    """Cached canvases, the classifier with its trainable part, AdamW, the state of a resumed
    run (or the network of ``init``), the bag layout, the type/source-balanced region weights and
    the augmentation settings (``augment`` over :data:`AUGMENT`; a resumed run keeps its own)."""
    from types import SimpleNamespace

    import torch

    tr, va = _load(cache, "train"), _load(cache, "val")
    clf = _new_clf(pretrained=not resume, cache=cache)
    frozen = _trainable(clf)
    params = [p for p in clf.net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    start, hist = 0, []
    augment = {**AUGMENT, **(augment or {})}
    total = int(total_epochs or epochs)
    if init is not None and not resume:
        st = torch.load(init, map_location="cpu", weights_only=False)
        clf.net.load_state_dict(st["net"])
        hist = [dict(h, cycle=1) for h in st["history"]]
    if resume:
        st = torch.load(cache / "state.pt", map_location="cpu", weights_only=False)
        clf.net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        start, hist, total = int(st["epoch"]), st["history"], int(st["total_epochs"])
        init = st.get("init")
        augment = st.get("augment", AUGMENT)
    Y = torch.as_tensor(tr["Y"])
    n = len(Y)
    # region weights: rarer types count more (sqrt-balanced), sources balanced
    freq = Y.numpy().mean(0) + 1e-3
    w = (Y.numpy() / np.sqrt(freq)).max(1)
    for s in np.unique(tr["source"]):
        m = tr["source"] == s
        w[m] /= w[m].sum()
    return SimpleNamespace(
        clf=clf,
        frozen=frozen,
        opt=opt,
        start=start,
        hist=hist,
        total=total,
        init=init,
        va=va,
        X=torch.as_tensor(tr["X"]),
        Y=Y,
        n=n,
        starts=np.searchsorted(tr["owner"], np.arange(n)).astype(np.int64),
        counts=np.bincount(tr["owner"], minlength=n).astype(np.int64),
        w=w / w.sum(),
        rng=np.random.default_rng(seed + start),
        gen=torch.Generator().manual_seed(seed + start),
        lossf=torch.nn.BCEWithLogitsLoss(),
        augment=augment,
    )


def _train_one_epoch(run, epoch: int, lr: float, regions_per_epoch: int, batch_regions: int):
    """``regions_per_epoch`` weighted draws in batches of ``batch_regions``, the learning rate
    on a per-step cosine over ``run.total`` epochs; (regions drawn, summed loss)."""
    from ..models.multilabel import segment_max

    clf, opt = run.clf, run.opt
    clf.net.train()
    for mod in run.frozen:
        mod.eval()
    pick = run.rng.choice(run.n, size=int(regions_per_epoch), replace=True, p=run.w)
    steps = int(np.ceil(len(pick) / batch_regions))
    tot = 0.0
    for b in range(steps):
        lr_now = lr * 0.5 * (1 + np.cos(np.pi * (epoch + b / steps) / run.total))
        for g in opt.param_groups:
            g["lr"] = lr_now
        reg = pick[b * batch_regions : (b + 1) * batch_regions]
        rows, local = _rows(run.starts, run.counts, reg)
        x = _normalise(augment_batch(run.X[rows], run.gen, **run.augment), clf)
        logits = segment_max(clf.net(x), local, len(reg))
        loss = run.lossf(logits, run.Y[reg])
        opt.zero_grad()
        loss.backward()
        opt.step()
        tot += loss.item() * len(reg)
    return len(pick), tot


def _validate(clf, va) -> dict:
    """Exact match per source and kind of validation region."""
    vp = region_probs(clf, va)
    vm = {}
    for s in ("xu", "chula"):
        for k in ("single", "patch", "occluded"):
            m = (va["source"] == s) & (va["kind"] == k)
            if m.any():
                vm[f"{s}/{k}"] = round(exact_match(vp[m], va["Y"][m]), 4)
    return vm


def finish(cache, out, *, tta: str = "none", fit_tta: str = "none", seed: int = 0, threads: int = 2, log=print) -> dict:
    """Fit the abnormal model on the training regions' outputs (views ``fit_tta``) and write the
    classifier checkpoint ``out`` (views ``tta`` at prediction)."""
    import torch

    from ..models.checkpoint import save_checkpoint
    from .multilabel import fit_abnormal_model

    torch.set_num_threads(threads)
    cache = Path(cache)
    st = torch.load(cache / "state.pt", map_location="cpu", weights_only=False)
    clf = _new_clf(pretrained=False, cache=cache)
    clf.net.load_state_dict(st["net"])
    clf.config["tta"] = fit_tta
    clf.config["pretrained"] = True
    tr = _load(cache, "train")
    tp = region_probs(clf, tr)
    clf.abnormal_model = fit_abnormal_model(tp, tr["Y"], seed=seed)
    clf.config["tta"] = tta
    va = _load(cache, "val")
    vp = region_probs(clf, va)
    prep = json.loads((cache / "prepare.json").read_text())
    clf.recipe = {
        "trainer": "napari_sickle.training.real_classifier",
        "backbone": BACKBONE,
        "input_size": INPUT_SIZE,
        "min_side": MIN_SIDE,
        "freeze_blocks": FREEZE_BLOCKS,
        "split": clf.split,
        "splitter": splitter_recipe(prep.get("splitter")) if clf.split == "unet" else None,
        "epochs": st["epoch"],
        "lr": st["lr"],
        "regions_per_epoch": st["regions_per_epoch"],
        "batch_regions": st["batch_regions"],
        "seed": st["seed"],
        "abnormal_fit_tta": fit_tta,
        "cosine_cycles": st.get("cycles", 1),
        "augment": st.get("augment", AUGMENT),
        "data": {k: prep[k] for k in ("train", "val")},
        "tta": tta,
    }
    clf.metrics = {
        "train_exact_fit_views": exact_match(tp, tr["Y"]),
        "val_exact": exact_match(vp, va["Y"]),
        "history": st["history"],
    }
    save_checkpoint(clf.to_checkpoint(), out)
    log(json.dumps({k: v for k, v in clf.metrics.items() if k != "history"}))
    return clf.metrics


def main(argv=None):
    import os

    from ..models.occlusion import OCCLUSION_RULES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("prepare", "train", "finish", "attach-splitter", "attach-stain"))
    ap.add_argument("--cache", default="runs/real_classifier")
    ap.add_argument("--data", default=os.environ.get("SICKLE_DATA", "../shared/data"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--total-epochs", type=int, default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--regions-per-epoch", type=int, default=7000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tta", default="hflip", help="views at prediction (stored in the checkpoint)")
    ap.add_argument("--fit-tta", default="none", help="views of the training outputs the abnormal model is fitted on")
    ap.add_argument("--init", default=None, help="start from the network of this state.pt (new schedule)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--classifier", default=None, help="attach-splitter: the trained classifier checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blur-p", type=float, default=AUGMENT["blur_p"], help="train: share of canvases defocused")
    ap.add_argument("--blur-sigma", type=float, default=AUGMENT["blur_sigma"], help="train: largest blur sigma (px)")
    ap.add_argument("--min-gain", type=float, default=AUGMENT["min_gain"], help="train: palest stain (OD gain)")
    ap.add_argument("--zoom", type=float, nargs=2, default=AUGMENT["zoom"], help="train: field width range of a canvas")
    ap.add_argument(
        "--occlusion",
        choices=OCCLUSION_RULES,
        default="none",
        help="attach-splitter: how a cell half hidden by a neighbour is read at prediction (models.occlusion)",
    )
    ap.add_argument(
        "--split", choices=("unet", "cells"), default=SPLIT, help="prepare: how regions are split into cells"
    )
    a = ap.parse_args(argv)
    from .._malloc import tune_malloc

    tune_malloc()
    import torch

    torch.set_num_threads(a.threads)
    if a.step == "prepare":
        prepare(Path(a.data) / "sickle-rbc", Path(a.data) / "chula-rbc12", a.cache, seed=a.seed, split=a.split)
    elif a.step == "train":
        train(
            a.cache,
            epochs=a.epochs,
            resume=a.resume,
            seed=a.seed,
            lr=a.lr,
            regions_per_epoch=a.regions_per_epoch,
            total_epochs=a.total_epochs,
            threads=a.threads,
            init=a.init,
            augment={"blur_p": a.blur_p, "blur_sigma": a.blur_sigma, "min_gain": a.min_gain, "zoom": list(a.zoom)},
        )
    elif a.step in ("attach-splitter", "attach-stain"):
        if not a.classifier or not a.out:
            ap.error(f"{a.step} needs --classifier and --out")
        if a.step == "attach-stain":
            from .stain_reference import attach_stain

            attach_stain(a.classifier, Path(a.data) / "chula-rbc12", a.out)
        else:
            attach_splitter(a.classifier, a.cache, a.out, occlusion=a.occlusion)
    else:
        finish(
            a.cache,
            a.out or str(Path(a.cache) / "classifier.pt"),
            tta=a.tta,
            fit_tta=a.fit_tta,
            seed=a.seed,
            threads=a.threads,
        )


if __name__ == "__main__":
    main()
