"""Scores of the multi-label classifier (per-type AUC, exact match, abnormal accuracy) and the
abnormal model fitted on its six outputs."""

from __future__ import annotations

import numpy as np

from ..constants import RBC_TYPES
from .multilabel_data import _abnormal_truth


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


def fit_abnormal_model(probs: np.ndarray, y: np.ndarray, seed: int = 0):
    """GradientBoostingClassifier on the six head outputs -> abnormal (0/1)."""
    from sklearn.ensemble import GradientBoostingClassifier

    target = _abnormal_truth(y)
    gb = GradientBoostingClassifier(n_estimators=100, max_depth=2, learning_rate=0.1, random_state=seed)
    if len(np.unique(target)) < 2:
        from sklearn.dummy import DummyClassifier

        return DummyClassifier(strategy="most_frequent").fit(probs, target)
    return gb.fit(probs, target)
