"""Ship a trained checkpoint as a named model: copy it into the package (fp16 storage) and
record its sha256 in weights/manifest.json.

    python scripts/register_model.py NAME --task rbc|wbc|unet [--default] \
        --description "trained on ..." ROLE=CHECKPOINT [ROLE=CHECKPOINT ...]

Roles: ``detector`` and ``classifier`` for rbc, ``classifier`` for wbc, ``unet`` for unet.
"""

from __future__ import annotations

import argparse
import sys

import torch

from napari_sickle.models import zoo


def to_fp16(obj):
    """Floating tensors to float16 (state dicts only; buffers like BN counts stay as they are)."""
    if isinstance(obj, torch.Tensor):
        return obj.half() if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: to_fp16(v) for k, v in obj.items()}
    return obj


def drop_packaged_backbone(ckpt: dict) -> int:
    """Multi-label classifiers keep their ImageNet backbone frozen: leave out every backbone tensor
    equal to the installed pretrained weights (they load from the backbone's package). Returns the
    number of tensors left out."""
    if ckpt.get("kind") != "multilabel" or not ckpt["config"].get("pretrained", False):
        return 0
    from napari_sickle.models.backbones import build_feature_extractor

    ref = build_feature_extractor(ckpt["config"]["backbone"], pretrained=True).state_dict()
    sd = ckpt["state_dict"]
    same = [
        k
        for k, v in sd.items()
        if k.startswith("backbone.")
        and k[9:] in ref
        and ref[k[9:]].shape == v.shape
        and torch.equal(ref[k[9:]].to(v.dtype), v)
    ]
    for k in same:
        del sd[k]
    if same:
        ckpt["config"]["backbone_weights"] = "package"
    return len(same)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--task", required=True, choices=zoo.TASKS)
    ap.add_argument("--description", required=True)
    ap.add_argument("--default", action="store_true")
    ap.add_argument("--keep-fp32", action="store_true", help="store float tensors as they are")
    ap.add_argument("files", nargs="+", metavar="ROLE=CHECKPOINT")
    a = ap.parse_args(argv)
    files = {}
    for spec in a.files:
        role, _, src = spec.partition("=")
        ckpt = torch.load(src, map_location="cpu", weights_only=True)
        ckpt.get("extra", {}).pop("optimizer", None)
        dropped = drop_packaged_backbone(ckpt)
        if dropped:
            print(f"{role}: {dropped} frozen backbone tensors load from the installed package")
        if not a.keep_fp32:
            ckpt["state_dict"] = to_fp16(ckpt["state_dict"])
        fn = f"{a.name}-{role}.pt"
        torch.save(ckpt, zoo.weights_dir() / fn)
        files[role] = fn
    m = zoo.register(a.name, a.task, a.description, files, default=a.default)
    for role in m.files:
        p = zoo.weights_dir() / m.files[role]["file"]
        print(f"{m.name} {role}: {p.name} {p.stat().st_size / 1e6:.1f} MB sha256 {m.files[role]['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
