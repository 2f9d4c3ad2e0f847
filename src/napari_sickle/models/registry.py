"""Load an RBC detector + multi-label classifier pair: a shipped model by name, checkpoint
paths, or the shipped default. Loading never trains and never downloads (see models/zoo.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class RBCModels:
    detector: Any  # models.detector.RegionDetector
    classifier: Any  # models.multilabel.RBCClassifier
    detector_path: str = ""
    classifier_path: str = ""
    name: str = ""  # the shipped model's name, "" for user checkpoints


def load_models(
    detector=None,
    classifier=None,
    device="auto",
    progress=None,
    model: str | None = None,
    fuse: bool = True,
    channels_last: bool = True,
) -> RBCModels:
    """Load the detector and classifier for analysis.

    ``model`` names a shipped RBC model (None: the shipped default). ``detector`` and
    ``classifier`` override its files with a checkpoint path or another shipped model's name.
    Wrong-kind checkpoints raise CheckpointError; missing or tampered shipped files raise
    zoo.ModelFileError. ``progress(stage, done, total)`` reports the loading steps.
    The networks are prepared for inference only (``models.fuse.prepare_inference``): batch
    norm folded into the convolutions unless ``fuse=False``, weights in channels_last layout
    on the CPU and CUDA unless ``channels_last=False`` (both measured faster on the CPU,
    docs/performance.md). To train or save, load with ``RegionDetector.from_checkpoint`` /
    ``RBCClassifier.from_checkpoint`` instead.
    """
    from .._device import detection_device, resolve_device
    from . import zoo
    from .detector import RegionDetector
    from .fuse import prepare_inference
    from .multilabel import RBCClassifier

    dev = resolve_device(device)
    det_dev = detection_device(dev)
    base = None
    if detector in (None, "") or classifier in (None, ""):
        base = zoo.get(model) if model else zoo.default("rbc")
        if base.task != "rbc":
            raise zoo.ModelFileError(f"model {base.name!r} is a {base.task} model, not an RBC model")
    det_path = zoo.resolve(detector, "rbc", "detector") if detector not in (None, "") else base.path("detector")
    clf_path = zoo.resolve(classifier, "rbc", "classifier") if classifier not in (None, "") else base.path("classifier")
    if progress is not None:
        progress("loading models", 0, 2)
    det = RegionDetector.from_checkpoint(det_path, device=det_dev)
    if progress is not None:
        progress("loading models", 1, 2)
    clf = RBCClassifier.from_checkpoint(clf_path, device=dev)
    prepare_inference(det.model, det_dev, fold=fuse, channels_last=channels_last)
    prepare_inference(clf.net, dev, fold=fuse, channels_last=channels_last)
    if progress is not None:
        progress("loading models", 2, 2)
    name = base.name if base is not None and detector in (None, "") and classifier in (None, "") else ""
    return RBCModels(det, clf, str(det_path), str(clf_path), name)
