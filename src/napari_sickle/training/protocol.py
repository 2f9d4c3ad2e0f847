"""The paper's Table 1 protocol on class folders of single-RBC crops (Qiu et al.).

``python -m napari_sickle.train multilabel-protocol --data SICKLE_DATA/sickle-rbc --out DIR``

* k-fold cross-validation (default 5, stratified by the single cell's type);
* in every fold, multi-cell patches are composed from the *training* crops for training
  and from the *test* crops for testing (``data.compose.compose_patches``), so no cell
  is seen on both sides;
* Model A: six heads trained on single cells + composed multi-cell patches, tested on the
  mixed test set (single + multi-cell); A*: the same model tested on single cells only;
  Model B: trained on single cells only, tested on the mixed set;
* every model is also scored on the multi-cell patches alone;
* the gradient-boosting abnormal classifier (scikit-learn) on the six head outputs gives
  the abnormal accuracy (abnormal = any type other than Oval/Disc).

The model recipe is the one ``train multilabel`` uses by default (``models.multilabel``
defaults: each region split into its cells, padded cell canvases at 160 px, the largest
probability over a region's cells, ``avgmax-s4`` pooling, standardised features), with
``DEFAULT_TRAIN_PATCHES`` (600) training and ``DEFAULT_TEST_PATCHES`` (150) test patches of
2-4 cells per fold (``train multilabel`` composes 1,500 from its one training split; fewer per
fold keep the five folds within the time budget, docs/results.md). Features
come from the frozen ImageNet backbone, computed once per image (in its eight rotations and
mirror images, ``tta="d4"``) and cached in memory. Results are
written to ``DIR/protocol.json`` and ``DIR/table1.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .._progress import report
from ..constants import RBC_TYPE_LABELS, RBC_TYPES, XU_FOLDER_TO_TYPE

#: composed multi-cell patches per fold (docs/results.md, Table 1)
DEFAULT_TRAIN_PATCHES = 600
DEFAULT_TEST_PATCHES = 150


def _abnormal(y: np.ndarray) -> np.ndarray:
    return np.asarray(y)[:, 1:].any(1).astype(int)


def _onehot(idx: int) -> np.ndarray:
    v = np.zeros(len(RBC_TYPES), dtype=np.float32)
    v[idx] = 1
    return v


def _load_crops(root):
    from ..data.compose import load_crops
    from ..io.datasets import DatasetError

    crops = load_crops(root, mapping=XU_FOLDER_TO_TYPE)
    if len(crops) < 10:
        raise DatasetError(
            f"{root}: only {len(crops)} readable single-cell crops; the protocol needs class folders "
            "named as in Xu et al. 2017 (Discocytes, Oval, Elongated, ...)."
        )
    return crops


def _patchset(images, ys, group):
    """Whole-image patches -> a :class:`~napari_sickle.training.multilabel.PatchSet` (one box per patch)."""
    from .multilabel import PatchSet

    ps = PatchSet()
    for i, (im, y) in enumerate(zip(images, ys)):
        h, w = im.shape[:2]
        ps.add(im, [[0, 0, w, h]], [y], group, [f"{group}:{i}"])
    return ps


def _features(clf, images, ys, group, progress, stage):
    from ..io.images import to_rgb_uint8
    from .multilabel import compute_features

    ps = _patchset([to_rgb_uint8(im) for im in images], ys, group)
    cb = None if progress is None else (lambda _s, d, t: progress(stage, d, t))
    return compute_features(clf, ps, progress=cb), ps.Y


def _fit(clf_feat_dim, X, Y, *, epochs, lr, batch_size, seed, standardize=True):
    import torch

    from ..models.multilabel import make_heads
    from .multilabel import _train_heads

    torch.manual_seed(seed)
    heads = make_heads(clf_feat_dim, standardize=standardize)
    if standardize:
        heads.set_standardization(X.X)
    _train_heads(heads, X, Y, X.take([]), Y[:0], epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    return heads.eval()


def _probs(heads, X):
    import torch

    from .multilabel import region_logits

    with torch.inference_mode():
        return torch.sigmoid(region_logits(heads, X)).numpy()


# ---------------------------------------------------------------------------------------
# the protocol
# ---------------------------------------------------------------------------------------
# long because its signature lists every option of the protocol (the command line passes them
# as keywords); the work itself is in _setup, _run_folds, _summarise and _report
def run_protocol(
    data,
    out,
    *,
    epochs=None,
    device="auto",
    backbone=None,
    seed=0,
    folds=None,
    progress=None,
    log=None,
    input_size: int | None = None,
    n_train_patches: int | None = None,
    n_test_patches: int = DEFAULT_TEST_PATCHES,
    max_cells: int = 4,
    head_epochs: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 64,
    pool: str | None = None,
    crop: str | None = None,
    min_side: int | None = None,
    standardize: bool = True,
    head_batch_size: int | None = None,
    tta: str | None = None,
    split: str | None = None,
    cell_split: dict | None = None,
    splitter: dict | None = None,
    splitter_options: dict | None = None,
    **unknown,
) -> dict:
    """Run Table 1 (Models A, A*, B) with k-fold CV; returns the train-entry-point dict
    with ``metrics`` (mean over folds) and ``report`` (per fold and mean).

    ``split="unet"``: each fold trains its own learned cell splitter
    (:func:`napari_sickle.training.splitter.train_splitter`, options ``splitter_options``) on
    the fold's training crops only, and the single cells are featurised again per fold."""

    from .._device import resolve_device
    from .multilabel import DEFAULT_EPOCHS, DEFAULT_HEAD_BATCH_SIZE
    from .recipes import check_keywords

    check_keywords("multilabel-protocol", run_protocol, unknown)  # -o typos are not run silently
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folds = int(folds or 5)
    head_epochs = int(head_epochs or epochs or DEFAULT_EPOCHS)
    backbone = backbone or "efficientnet-lite0"
    n_train_patches = int(DEFAULT_TRAIN_PATCHES if n_train_patches is None else n_train_patches)
    dev = resolve_device(device)
    run = _setup(
        data,
        backbone=backbone,
        input_size=input_size,
        dev=dev,
        seed=seed,
        progress=progress,
        classifier=dict(pool=pool, crop=crop, min_side=min_side, standardize=standardize, tta=tta, split=split),
        cell_split=cell_split,
        splitter=splitter,
        splitter_options=splitter_options,
        patches=(int(n_train_patches), int(n_test_patches), max_cells),
        fit=dict(
            epochs=head_epochs,
            lr=lr,
            batch_size=int(head_batch_size or DEFAULT_HEAD_BATCH_SIZE),
            standardize=bool(standardize),
        ),
    )
    per_fold = _run_folds(run, folds, log)
    summary = _summarise(per_fold)
    seconds = time.perf_counter() - t0
    rep = _report(
        run,
        data=data,
        folds=folds,
        backbone=backbone,
        head_epochs=head_epochs,
        n_train_patches=n_train_patches,
        n_test_patches=n_test_patches,
        max_cells=max_cells,
        seed=seed,
        seconds=seconds,
        summary=summary,
        per_fold=per_fold,
    )
    (out / "protocol.json").write_text(json.dumps(rep, indent=2, default=float))
    (out / "table1.md").write_text(table1_markdown(rep))
    return {
        "checkpoint": None,
        "metrics": _headline(summary),
        "history": per_fold,
        "seconds": seconds,
        "report": str(out / "table1.md"),
    }


def _run_folds(run: SimpleNamespace, folds: int, log) -> list[dict]:
    """Stratified k-fold over the crops' types (shuffled with the run's seed); one
    :func:`_run_fold` per fold, each logged."""
    from sklearn.model_selection import StratifiedKFold

    progress, seed = run.progress, run.seed
    crops = run.crops
    strata = np.array([c.type_index for c in crops])
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    per_fold = []
    for k, (tr, te) in enumerate(skf.split(np.zeros(len(crops)), strata)):
        report(progress, "folds", k, folds)
        fold = _run_fold(run, k, tr, te)
        per_fold.append(fold)
        if log is not None:
            log(
                {
                    "event": "fold",
                    "fold": k + 1,
                    "folds": folds,
                    "A_mixed_exact_match": fold["A/mixed"]["exact_match_accuracy"],
                    "A_single_exact_match": fold["A/single"]["exact_match_accuracy"],
                    "B_mixed_exact_match": fold["B/mixed"]["exact_match_accuracy"],
                }
            )
    report(progress, "folds", folds, folds)
    return per_fold


def _setup(
    data, *, backbone, input_size, dev, seed, progress, classifier, cell_split, splitter, splitter_options, patches, fit
):
    """The crops, the classifier (``classifier``: pool, crop, min_side, standardize, tta, split;
    None = the ``train multilabel`` defaults) and, without the learned splitter, the single
    cells' features, once for all folds."""
    from ..models import multilabel as mlm

    crops = _load_crops(data)
    c = classifier
    clf = mlm.new_classifier(
        backbone,
        input_size=input_size,
        pretrained=True,
        device=dev,
        pool=c["pool"] or mlm.DEFAULT_POOL,
        crop=c["crop"] or mlm.DEFAULT_CROP,
        min_side=c["min_side"],
        standardize=bool(c["standardize"]),
        tta=c["tta"] or mlm.DEFAULT_TTA,
        split=c["split"] or mlm.DEFAULT_SPLIT,
        cell_split=cell_split,
        splitter=splitter,
    )
    run = SimpleNamespace(
        clf=clf,
        crops=crops,
        dev=dev,
        seed=seed,
        progress=progress,
        learned=clf.split == "unet",
        single=([c.image for c in crops], [_onehot(c.type_index) for c in crops]),
        splitter_options=splitter_options,
        splitter_stats=[],
        patches=patches,
        fit=fit,
    )
    if not run.learned:
        run.X_single, run.y_single = _features(clf, *run.single, "single", progress, "features: single cells")
    return run


def _report(
    run: SimpleNamespace,
    *,
    data,
    folds,
    backbone,
    head_epochs,
    n_train_patches,
    n_test_patches,
    max_cells,
    seed,
    seconds,
    summary,
    per_fold,
) -> dict:
    """The content of ``protocol.json``."""
    clf = run.clf
    return {
        "data": str(data),
        "folds": folds,
        "backbone": backbone,
        "input_size": int(clf.input_size),
        "pool": clf.pool,
        "crop": clf.config["crop"],
        "min_side": clf.config["min_side"],
        "tta": clf.tta,
        "split": clf.split,
        **({"splitter": run.splitter_stats} if run.learned else {}),
        "head_epochs": head_epochs,
        "n_train_patches": int(n_train_patches),
        "n_test_patches": int(n_test_patches),
        "max_cells": int(max_cells),
        "seed": int(seed),
        "device": str(run.dev),
        "seconds": seconds,
        "summary": summary,
        "per_fold": per_fold,
    }


def _run_fold(run: SimpleNamespace, k: int, tr, te) -> dict:
    """One fold: (with the learned splitter, the fold's splitter and single-cell features),
    composed training/test patches, Models A and B, and their scores on the mixed, single-cell
    and multi-cell test sets."""
    from ..data.compose import compose_patches
    from .multilabel import Bags

    clf, crops, seed, progress = run.clf, run.crops, run.seed, run.progress
    tr_crops = [crops[i] for i in tr]
    te_crops = [crops[i] for i in te]
    if run.learned:
        from .splitter import fit_classifier_splitter

        cb = None if progress is None else (lambda st, d, t, _k=k: progress(f"fold {_k + 1} {st}", d, t))
        run.splitter_stats.append(
            fit_classifier_splitter(
                clf, tr_crops, seed=seed * 1000 + k, device=run.dev, progress=cb, **(run.splitter_options or {})
            )
        )
        run.X_single, run.y_single = _features(
            clf, *run.single, "single", progress, f"features: fold {k + 1} single cells"
        )
    X_single, y_single = run.X_single, run.y_single
    n_train_patches, n_test_patches, max_cells = run.patches
    train_p = compose_patches(tr_crops, n_train_patches, seed=seed * 1000 + 2 * k, max_cells=max_cells, min_cells=2)
    test_p = compose_patches(te_crops, n_test_patches, seed=seed * 1000 + 2 * k + 1, max_cells=max_cells, min_cells=2)
    X_trp, y_trp = _features(
        clf,
        [p[0] for p in train_p],
        [p[1] for p in train_p],
        "train-patches",
        progress,
        f"features: fold {k + 1} train patches",
    )
    X_tep, y_tep = _features(
        clf,
        [p[0] for p in test_p],
        [p[1] for p in test_p],
        "test-patches",
        progress,
        f"features: fold {k + 1} test patches",
    )
    X_tes, y_tes = X_single.take(te), y_single[te]
    X_trs = X_single.take(tr)
    train_sets = {
        "A": (Bags.cat([X_trs, X_trp]), np.concatenate([y_single[tr], y_trp])),
        "B": (X_trs, y_single[tr]),
    }
    tests = {
        "mixed": (Bags.cat([X_tes, X_tep]), np.concatenate([y_tes, y_tep])),
        "single": (X_tes, y_tes),
        "multi": (X_tep, y_tep),
    }
    fold = {
        "fold": k + 1,
        "n_train_single": int(len(tr)),
        "n_train_patches": int(len(train_p)),
        "n_test_single": int(len(te)),
        "n_test_patches": int(len(test_p)),
    }
    models = {name: _fit(X_single.dim, X, Y, seed=seed + k, **run.fit) for name, (X, Y) in train_sets.items()}
    for name, heads in models.items():
        fold.update(_score(heads, *train_sets[name], tests, name, seed))
    return fold


def _score(heads, train_X, train_Y, tests: dict, name: str, seed: int) -> dict:
    """The abnormal model fitted on the heads' training outputs; every test set's metrics."""
    from .multilabel import fit_abnormal_model, multilabel_metrics

    gbc = fit_abnormal_model(_probs(heads, train_X), train_Y, seed=seed)
    scores = {}
    for test_name, (Xe, ye) in tests.items():
        pr = _probs(heads, Xe)
        scores[f"{name}/{test_name}"] = multilabel_metrics(ye, pr, gbc.predict(pr))
    return scores


def _summarise(per_fold: list[dict]) -> dict:
    """Mean (and spread) over the folds of every model/test-set score."""
    summary = {}
    for key in [k for k in per_fold[0] if "/" in k]:
        ms = [f[key] for f in per_fold]
        summary[key] = {
            "exact_match_accuracy": float(np.mean([m["exact_match_accuracy"] for m in ms])),
            "exact_match_std": float(np.std([m["exact_match_accuracy"] for m in ms])),
            "mean_auc": float(np.mean([m["mean_auc"] for m in ms if m["mean_auc"] is not None])),
            "abnormal_accuracy": float(np.mean([m["abnormal_accuracy"] for m in ms])),
            "auc": {
                t: float(np.mean([m["auc"][t] for m in ms if m["auc"].get(t) is not None]))
                for t in RBC_TYPES
                if any(m["auc"].get(t) is not None for m in ms)
            },
            "n": int(sum(m["n"] for m in ms)),
        }
    return summary


def _headline(summary: dict) -> dict:
    return {
        "A_mixed_exact_match": summary["A/mixed"]["exact_match_accuracy"],
        "A*_single_exact_match": summary["A/single"]["exact_match_accuracy"],
        "A_multi_exact_match": summary["A/multi"]["exact_match_accuracy"],
        "B_mixed_exact_match": summary["B/mixed"]["exact_match_accuracy"],
        "B_multi_exact_match": summary["B/multi"]["exact_match_accuracy"],
        "A*_single_mean_auc": summary["A/single"]["mean_auc"],
        "A_mixed_abnormal_accuracy": summary["A/mixed"]["abnormal_accuracy"],
        "A*_single_abnormal_accuracy": summary["A/single"]["abnormal_accuracy"],
    }


def table1_markdown(rep: dict) -> str:
    s = rep["summary"]
    rows = [
        ("Model A", "single + multi-cell", "mixed", "A/mixed"),
        ("Model A*", "single + multi-cell", "single cells", "A/single"),
        ("Model A", "single + multi-cell", "multi-cell patches", "A/multi"),
        ("Model B", "single cells", "mixed", "B/mixed"),
        ("Model B", "single cells", "single cells", "B/single"),
        ("Model B", "single cells", "multi-cell patches", "B/multi"),
    ]
    lines = [
        "| model | trained on | tested on | n | exact match (mean ± sd over folds) | mean AUC | abnormal acc. | "
        + " | ".join(RBC_TYPE_LABELS[t] + " AUC" for t in RBC_TYPES)
        + " |",
        "|" + "---|" * (7 + len(RBC_TYPES)),
    ]
    for label, trained, tested, key in rows:
        m = s[key]
        aucs = " | ".join(f"{m['auc'][t]:.3f}" if t in m["auc"] else "–" for t in RBC_TYPES)
        lines.append(
            f"| {label} | {trained} | {tested} | {m['n']} | {m['exact_match_accuracy']:.3f} ± "
            f"{m['exact_match_std']:.3f} | {m['mean_auc']:.3f} | {m['abnormal_accuracy']:.3f} | {aucs} |"
        )
    lines.append("")
    lines.append(
        f"{rep['folds']}-fold CV, backbone {rep['backbone']} at {rep['input_size']} px "
        f"(crop {rep.get('crop', 'stretch')}, pooling {rep.get('pool', 'avg')}, tta {rep.get('tta', 'none')}, "
        f"split {rep.get('split', 'none')}), "
        f"{rep['head_epochs']} head epochs, {rep['n_train_patches']} composed training patches and "
        f"{rep['n_test_patches']} composed test patches per fold (max {rep['max_cells']} cells), seed "
        f"{rep['seed']}, {rep['seconds']:.0f} s on {rep['device']}."
    )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# composed smears as an images/ + masks/ folder (for `train detector` / `evaluate detector`)
# ---------------------------------------------------------------------------------------
def write_composed_smears(crops_root, out, n: int = 3, seed: int = 0, shape=(1080, 1920), progress=None) -> Path:
    """Compose ``n`` whole smears from the single-cell crops under ``crops_root`` and write them
    as ``out/images/smear_<k>.png`` + ``out/masks/smear_<k>.png`` (0/255 cell mask); the
    detector's boxes are then one per connected region, as in the paper."""
    import imageio.v3 as iio

    from ..data.compose import compose_smear

    crops = _load_crops(crops_root)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for k in range(int(n)):
        sm = compose_smear(crops, seed=seed + k, shape=tuple(shape))
        iio.imwrite(out / "images" / f"smear_{k}.png", sm.image)
        iio.imwrite(out / "masks" / f"smear_{k}.png", ((sm.instances > 0) * 255).astype(np.uint8))
        report(progress, "compose smears", k + 1, int(n))
    return out


if __name__ == "__main__":  # pragma: no cover
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m napari_sickle.training.protocol",
        description="Write composed smears (images/ + masks/) from class folders of crops.",
    )
    ap.add_argument("--data", required=True, help="class folders of single-cell crops (e.g. sickle-rbc)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--width", type=int, default=1920)
    a = ap.parse_args()
    print(write_composed_smears(a.data, a.out, a.n, a.seed, (a.height, a.width)))
