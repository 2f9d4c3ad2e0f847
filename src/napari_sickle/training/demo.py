"""Rebuild the ``rbc-simulated-demo`` models: a quick detector and classifier trained on
simulated smears only (no real data needed). The shipped default is trained on real smears;
see docs/models.md for both model cards and the commands that rebuild them.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

#: Recipe of the simulated demo models.
QUICK_DEFAULT: dict[str, dict] = {
    "detector": dict(
        backbone="efficientnet-lite0-fpn",
        epochs=6,
        iters_per_epoch=40,
        batch_size=2,
        crop_size=320,
        n_smears=10,
        lr=5e-4,
        seed=0,
    ),
    "classifier": dict(
        backbone="efficientnet-lite0",
        input_size=64,
        epochs=15,
        n_smears=5,
        lr=1e-3,
        seed=0,
        pool="avg",
        crop="stretch",
        standardize=False,
        tta="none",
        split="none",
        head_batch_size=64,
    ),
}


def train_quick_default(out, progress=None, log=None, config: dict | None = None, device="auto") -> tuple[Path, Path]:
    """Train the simulated demo detector and classifier into ``out/{detector,classifier}.pt``.

    ``config`` updates :data:`QUICK_DEFAULT` per model (tests use a tiny one). Existing files
    are kept, so an interrupted build resumes with the model still missing.
    """
    from .detector import train_detector
    from .multilabel import train_multilabel

    cfg = {k: dict(v) for k, v in QUICK_DEFAULT.items()}
    for k, v in (config or {}).items():
        cfg.setdefault(k, {}).update(v)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    det_path, clf_path = out / "detector.pt", out / "classifier.pt"

    def staged(prefix):
        if progress is None:
            return None
        return lambda stage, done, total: progress(f"{prefix} {stage}", done, total)

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        if not det_path.is_file():
            r = train_detector(
                "simulated",
                Path(tmp) / "det",
                device=device,
                progress=staged("demo detector:"),
                log=log,
                **cfg["detector"],
            )
            shutil.copyfile(r["checkpoint"], Path(tmp) / "det.pt")
            Path(tmp, "det.pt").replace(det_path)
        if not clf_path.is_file():
            r = train_multilabel(
                "simulated",
                Path(tmp) / "clf",
                device=device,
                progress=staged("demo classifier:"),
                log=log,
                **cfg["classifier"],
            )
            shutil.copyfile(r["checkpoint"], Path(tmp) / "clf.pt")
            Path(tmp, "clf.pt").replace(clf_path)
    return det_path, clf_path
