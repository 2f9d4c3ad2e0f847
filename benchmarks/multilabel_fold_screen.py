"""Screen a multi-label recipe on one fold of the Table 1 protocol (docs/results.md).

Same folds, patch seeds and head training as ``train multilabel-protocol`` (fold ``--fold``,
0-based), printing Model A's exact match on the fold's single cells and composed multi-cell
test patches, broken down by whether the cell split found each patch's number of cells.
Keyword arguments of ``models.multilabel.new_classifier`` are given as JSON:

    python benchmarks/multilabel_fold_screen.py --data $SICKLE_DATA/sickle-rbc \\
        '{"cell_split": {"min_peak": 6}}'
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-test", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--save",
        help="also write the fold's cached features, owners, labels and test probabilities "
        "to this .npz file (to study heads and decision rules without the backbone)",
    )
    ap.add_argument("--splitter-options", default="{}", help="train_splitter options (JSON) for split='unet'")
    ap.add_argument("classifier", nargs="?", default="{}", help="new_classifier keyword arguments (JSON)")
    a = ap.parse_args(argv)

    import torch
    from sklearn.model_selection import StratifiedKFold

    from napari_sickle.data.compose import compose_patches
    from napari_sickle.models import multilabel as mlm
    from napari_sickle.training.multilabel import Bags, fit_abnormal_model, multilabel_metrics
    from napari_sickle.training.protocol import _features, _fit, _load_crops, _onehot, _probs

    torch.set_num_threads(a.threads)
    t0 = time.time()
    crops = _load_crops(a.data)
    clf = mlm.new_classifier(**json.loads(a.classifier))
    strata = np.array([c.type_index for c in crops])
    k = a.fold
    tr, te = list(StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(np.zeros(len(crops)), strata))[k]
    splitter = None
    if clf.split == "unet":  # as the protocol: the fold's own splitter, from its training crops
        from napari_sickle.training.splitter import fit_classifier_splitter

        splitter = fit_classifier_splitter(clf, [crops[i] for i in tr], seed=k, **json.loads(a.splitter_options))
    Xs, ys = _features(clf, [c.image for c in crops], [_onehot(c.type_index) for c in crops], "single", None, "")
    trp = compose_patches([crops[i] for i in tr], a.n_train, seed=2 * k, max_cells=4, min_cells=2)
    tep = compose_patches([crops[i] for i in te], a.n_test, seed=2 * k + 1, max_cells=4, min_cells=2)
    Xtrp, ytrp = _features(clf, [p[0] for p in trp], [p[1] for p in trp], "train", None, "")
    Xtep, ytep = _features(clf, [p[0] for p in tep], [p[1] for p in tep], "test", None, "")
    Xtra, ytra = Bags.cat([Xs.take(tr), Xtrp]), np.concatenate([ys[tr], ytrp])
    heads = _fit(Xs.dim, Xtra, ytra, epochs=40, lr=1e-3, batch_size=256, seed=k)
    gb = fit_abnormal_model(_probs(heads, Xtra), ytra)
    out = {"classifier": json.loads(a.classifier), "fold": k}
    if splitter is not None:
        out["splitter"] = splitter
    saved = {}
    for name, (X, y) in {"single": (Xs.take(te), ys[te]), "multi": (Xtep, ytep)}.items():
        pr = _probs(heads, X)
        saved.update(
            {f"{name}_X": X.X.astype(np.float16), f"{name}_owner": X.owner, f"{name}_y": y, f"{name}_probs": pr}
        )
        m = multilabel_metrics(y, pr, gb.predict(pr))
        out[name] = {key: m[key] for key in ("exact_match_accuracy", "mean_auc", "abnormal_accuracy", "n")}
        if name == "multi":
            found = np.bincount(X.owner, minlength=X.n)
            cells = np.array([p[2] for p in tep])
            ok = np.all((pr >= 0.5) == (y > 0), axis=1)
            out["multi_by_split"] = {
                lab: {"n": int(sel.sum()), "exact": float(ok[sel].mean()) if sel.any() else None}
                for lab, sel in (("split = cells", found == cells), ("merged", found < cells), ("cut", found > cells))
            }
    out["seconds"] = round(time.time() - t0, 1)
    if a.save:
        np.savez(a.save, train_X=Xtra.X.astype(np.float16), train_owner=Xtra.owner, train_y=ytra, **saved)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
