"""Default RBC models: load from the user cache, or train a quick default on simulated smears.

The cache folder is ``_paths.cache_dir()`` (override with ``NAPARI_SICKLE_CACHE``); the default
models live in ``<cache>/rbc-default/{detector,classifier}.pt``. When they are missing and
``allow_train`` is true, :func:`get_default_models` trains them with :data:`QUICK_DEFAULT`
(documented in docs/analysis.md with its measured time on a 2-core CPU).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Quick-default training recipe (simulated smears only; no real data needed).
QUICK_DEFAULT: dict[str, dict] = {
    "detector": dict(backbone="efficientnet-lite0-fpn", epochs=6, iters_per_epoch=40, batch_size=2, crop_size=320,
                     n_smears=10, lr=5e-4, seed=0),
    # the original multi-label recipe (stretched 64 px crops, average pooling), measured in docs/analysis.md
    "classifier": dict(backbone="efficientnet-lite0", input_size=64, epochs=15, n_smears=5, lr=1e-3, seed=0,
                       pool="avg", crop="stretch", standardize=False, tta="none", split="none",
                       head_batch_size=64),
}
DEFAULT_FOLDER = "rbc-default"


@dataclass
class RBCModels:
    detector: Any  # models.detector.RegionDetector
    classifier: Any  # models.multilabel.RBCClassifier
    detector_path: str = ""
    classifier_path: str = ""


def default_paths() -> tuple[Path, Path]:
    from .._paths import cache_dir

    d = cache_dir() / DEFAULT_FOLDER
    return d / "detector.pt", d / "classifier.pt"


def train_quick_default(progress=None, log=None, config: dict | None = None, device="auto") -> tuple[Path, Path]:
    """Train the quick default detector and classifier on simulated smears; cache them."""
    import shutil

    from ..training.detector import train_detector
    from ..training.multilabel import train_multilabel

    cfg = {k: dict(v) for k, v in QUICK_DEFAULT.items()}
    for k, v in (config or {}).items():
        cfg.setdefault(k, {}).update(v)
    det_path, clf_path = default_paths()
    det_path.parent.mkdir(parents=True, exist_ok=True)

    def staged(prefix):
        if progress is None:
            return None
        return lambda stage, done, total: progress(f"{prefix} {stage}", done, total)

    with tempfile.TemporaryDirectory(dir=det_path.parent) as tmp:
        if not det_path.is_file():
            r = train_detector("simulated", Path(tmp) / "det", device=device, progress=staged("default detector:"),
                               log=log, **cfg["detector"])
            shutil.copyfile(r["checkpoint"], Path(tmp) / "det.pt")
            Path(tmp, "det.pt").replace(det_path)
        if not clf_path.is_file():
            r = train_multilabel("simulated", Path(tmp) / "clf", device=device,
                                 progress=staged("default classifier:"), log=log, **cfg["classifier"])
            shutil.copyfile(r["checkpoint"], Path(tmp) / "clf.pt")
            Path(tmp, "clf.pt").replace(clf_path)
    return det_path, clf_path


def load_models(detector=None, classifier=None, device="auto", progress=None, allow_train: bool = True) -> RBCModels:
    """Load a detector and a classifier checkpoint; ``None`` means the cached default
    (trained on first use if ``allow_train``). Wrong-kind checkpoints raise CheckpointError."""
    import torch

    from .._device import resolve_device
    from .detector import RegionDetector
    from .multilabel import RBCClassifier

    dev = resolve_device(device)
    det_dev = torch.device("cpu") if dev.type == "mps" else dev  # torchvision detection ops on CPU for MPS
    if detector is None or classifier is None:
        d_path, c_path = default_paths()
        if not (d_path.is_file() and c_path.is_file()):
            if not allow_train:
                raise FileNotFoundError(
                    f"No default RBC models in {d_path.parent}; train them with get_default_models(allow_train=True) "
                    f"or pass detector/classifier checkpoints."
                )
            train_quick_default(progress=progress, device=device)
        detector = detector if detector is not None else d_path
        classifier = classifier if classifier is not None else c_path
    det = RegionDetector.from_checkpoint(detector, device=det_dev)
    clf = RBCClassifier.from_checkpoint(classifier, device=dev)
    return RBCModels(det, clf, str(detector), str(classifier))


def get_default_models(device="auto", progress=None, allow_train: bool = True) -> RBCModels:
    """The cached default models, trained on simulated smears on first use."""
    return load_models(None, None, device=device, progress=progress, allow_train=allow_train)
