"""Measure a classifier's stain reference on its training smears and store it in the checkpoint.

    python -m napari_sickle.training.real_classifier attach-stain --classifier in.pt --out out.pt \
        --data $SICKLE_DATA

The reference (``models.stain.stain_reference``) is the median cell lightness (CIELAB L*) and
its median spread over the Chula RBC-12 *training* smears (image number not divisible by 5), the
colour source of the shipped classifier's training cells. ``analysis.smear.classify_regions``
matches an uncertain smear's cells to it. The network, splitter and abnormal model stay as
they are.
"""

from __future__ import annotations

from pathlib import Path


def chula_training_lightness(chula_root, log=print) -> list:
    """:func:`models.stain.cell_lightness` of every Chula RBC-12 training smear."""
    from ..data.real_cells import chula_is_val
    from ..io.images import read_image, to_rgb_uint8
    from ..models.stain import cell_lightness

    paths = [p for p in (Path(chula_root) / "Dataset").glob("*.jpg") if p.stem.isdigit()]
    paths = sorted(paths, key=lambda p: int(p.stem))
    paths = [p for p in paths if not chula_is_val(p.stem)]
    if not paths:
        raise FileNotFoundError(f"no Chula RBC-12 training smears under {chula_root}/Dataset")
    out = []
    for k, p in enumerate(paths):
        out.append(cell_lightness(to_rgb_uint8(read_image(p))))
        if (k + 1) % 100 == 0:
            log(f"measured {k + 1} / {len(paths)} smears")
    return out


def attach_stain(classifier, chula_root, out, log=print) -> dict:
    """Write ``out``: the classifier of ``classifier`` with ``config["stain_reference"]``
    measured on the Chula training smears; returns the reference."""
    from ..models.checkpoint import save_checkpoint
    from ..models.multilabel import RBCClassifier
    from ..models.stain import stain_reference

    clf = RBCClassifier.from_checkpoint(classifier)
    ref = {**stain_reference(chula_training_lightness(chula_root, log=log)), "source": "chula-rbc12 training smears"}
    clf.config["stain_reference"] = ref
    clf.recipe = {**(clf.recipe or {}), "stain_reference": ref}
    save_checkpoint(clf.to_checkpoint(), out)
    log(f"wrote {out}: stain_reference={ref}")
    return ref
