"""Training recipes: one frozen dataclass per trainer (detector, multilabel, bm, unet).

A recipe holds every setting that decides what a training run computes: the CLI's common
flags (``--epochs``, ``--backbone``, ``--seed``, ``--lr``, ``--batch-size``, ``--input-size``)
and its ``-o KEY=VALUE`` options, the widget's options line and the trainers' keyword
arguments all build one through :meth:`Recipe.from_options`, which refuses unknown keys with
the list of valid ones. Settings of the run itself (device, resume file, progress and log
callbacks, cross-validation folds) are not part of it. The checkpoint records
``recipe.asdict()`` under ``config["recipe"]``.

``None`` marks a setting derived from others (the detector's ``scale`` from its backbone, the
multilabel ``compose`` from the kind of data, ...); :meth:`resolved` fills those in, in one
place per recipe. Settings that depend on the data themselves (the detector's
``iters_per_epoch``, the bm input size from the crops) are derived by the trainer when it has
loaded them.
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

#: keyword arguments of every trainer that describe the run, not the recipe
RUN_KEYS = ("device", "resume", "folds", "progress", "log")


class RecipeError(ValueError, TypeError):
    """An unknown or malformed training option (the CLI reports it in one line, exit code 2)."""


def parse_value(text: str):
    """A ``-o KEY=VALUE`` value: a Python literal, yes/no words as booleans, else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        low = text.lower()
        if low in ("true", "yes", "on"):
            return True
        if low in ("false", "no", "off"):
            return False
        return text


def parse_option(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> (key with ``-`` as ``_``, parsed value); RecipeError without ``=``."""
    if "=" not in text:
        raise RecipeError(f"option {text!r} is not KEY=VALUE")
    key, _, value = text.partition("=")
    return key.strip().replace("-", "_"), parse_value(value.strip())


#: settings that hold class names: ``-o classes=RBC,WBC`` is the tuple ("RBC", "WBC")
NAME_LISTS = ("classes", "class_names")


def _coerce(default, value, key: str = ""):
    """Strings for non-string settings are parsed as ``-o`` values, comma-separated text of a
    class-name setting becomes a tuple of names; an int for a float setting becomes a float.
    Anything else is kept as given (the trainer checks it)."""
    if key in NAME_LISTS and isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, str) and default is not None and not isinstance(default, str):
        value = parse_value(value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return value


def _plain(value):
    """A value as checkpoints store it (``weights_only`` loading): tuples as lists, paths as text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class Recipe:
    """Shared behaviour of the recipe dataclasses."""

    label: ClassVar[str] = "training"

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None):
        """The recipe with ``options`` (key -> value, values may be ``-o`` strings) over the
        defaults; RecipeError naming the valid keys for an unknown one."""
        options = dict(options or {})
        valid = cls.keys()
        unknown = sorted(k for k in options if k not in valid)
        if unknown:
            raise RecipeError(
                f"unknown {cls.label} training option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        return cls(**{k: _coerce(defaults[k], v, k) for k, v in options.items()})

    def replace(self, **changes):
        """A copy with ``changes`` (checked like :meth:`from_options`)."""
        if not changes:
            return self
        return type(self).from_options({**{k: getattr(self, k) for k in self.keys()}, **changes})

    def asdict(self) -> dict:
        """Every setting, as plain values (stored as the checkpoint's ``config["recipe"]``)."""
        return {k: _plain(getattr(self, k)) for k in self.keys()}

    @classmethod
    def build(cls, recipe=None, options: Mapping[str, Any] | None = None):
        """A trainer's recipe: ``recipe`` (or the defaults) with the keyword ``options`` over it."""
        if recipe is None:
            return cls.from_options(options)
        if not isinstance(recipe, cls):
            raise RecipeError(f"expected a {cls.__name__}, got {type(recipe).__name__}")
        return recipe.replace(**dict(options or {}))


@dataclass(frozen=True)
class DetectorRecipe(Recipe):
    """Faster R-CNN region detector (training.detector; its module docstring explains each)."""

    label: ClassVar[str] = "detector"

    epochs: int | None = None  # None: 8
    backbone: str | None = None  # None: efficientnet-lite0-fpn
    seed: int = 0
    scale: float | None = None  # None: 0.5 for the CPU architectures, 1.0 for the ResNet ones
    lr: float = 1e-4
    batch_size: int = 2
    crop_size: int = 512
    iters_per_epoch: int | None = None  # None: about one pass over the training pixels
    n_smears: int = 6
    val_fraction: float = 0.2
    classes: Any = None
    pretrained: bool = True
    val_data: Any = None
    smear_shape: tuple = (1080, 1920)
    cluster_fraction: float | None = None
    validate_on: str = "train"
    region_merge: Any = None
    tta: str | None = None
    rot90: bool = False
    ema: float = 0.0
    scale_jitter: Any = None
    min_visible: float = 0.7
    rpn_batch_size_per_image: int | None = None
    rpn_positive_fraction: float | None = None
    box_batch_size_per_image: int | None = None
    box_positive_fraction: float | None = None
    cell_diameter: float | None = None
    color_aug: bool = False
    source_balance: Any = True
    val_limit: int | None = None

    def resolved(self) -> "DetectorRecipe":
        """epochs, backbone and scale filled in."""
        arch = self.backbone or "efficientnet-lite0-fpn"
        scale = self.scale
        if scale is None:
            scale = 0.5 if arch in ("efficientnet-lite0-fpn", "mobilenet-v3") else 1.0
        return dataclasses.replace(self, epochs=int(self.epochs or 8), backbone=arch, scale=scale)


@dataclass(frozen=True)
class MultilabelRecipe(Recipe):
    """Six-head multi-label RBC classifier (training.multilabel; see its module docstring)."""

    label: ClassVar[str] = "multilabel"

    epochs: int | None = None  # None: training.multilabel.DEFAULT_EPOCHS (see resolved)
    backbone: str | None = None  # None: efficientnet-lite0
    seed: int = 0
    input_size: int | None = None  # None: the backbone's default
    lr: float = 1e-3
    batch_size: int = 64
    val_fraction: float = 0.2
    n_smears: int = 7
    compose: int | None = None  # None: DEFAULT_COMPOSE on class folders, else 0
    pretrained: bool = True
    val_data: Any = None
    smear_shape: tuple = (1080, 1920)
    pool: str | None = None  # None: models.multilabel.DEFAULT_POOL (and crop, tta, split alike)
    crop: str | None = None
    min_side: int | None = None
    standardize: bool = True
    n_val_patches: int | None = None  # None: compose // 5
    min_cells: int = 2
    max_cells: int = 4
    head_batch_size: int = 256
    tta: str | None = None
    split: str | None = None
    cell_split: dict | None = None
    splitter: dict | None = None
    splitter_options: dict | None = None

    def resolved(self, *, folder_data: bool, default_epochs: int, default_compose: int) -> "MultilabelRecipe":
        """epochs, backbone, pool, crop, tta, split, compose and n_val_patches filled in;
        ``folder_data``: the data are class folders of crops (``default_compose`` composed
        patches unless ``compose`` is given; none on other data)."""
        from ..models import multilabel as mlm

        compose = int((default_compose if folder_data else 0) if self.compose is None else self.compose)
        return dataclasses.replace(
            self,
            epochs=int(self.epochs or default_epochs),
            backbone=self.backbone or "efficientnet-lite0",
            pool=self.pool or mlm.DEFAULT_POOL,
            crop=self.crop or mlm.DEFAULT_CROP,
            tta=self.tta or mlm.DEFAULT_TTA,
            split=self.split or mlm.DEFAULT_SPLIT,
            compose=compose,
            n_val_patches=int(compose // 5 if self.n_val_patches is None else self.n_val_patches),
        )


@dataclass(frozen=True)
class UNetRecipe(Recipe):
    """Segmentation U-Net (training.unet; see its module docstring)."""

    label: ClassVar[str] = "U-Net"

    epochs: int | None = None  # None: 16
    backbone: str | None = None  # the U-Net has none; None, "" or "unet"
    seed: int = 0
    depth: int = 3
    base_channels: int = 16
    scale: float = 0.25
    crop: int = 128
    batch_size: int = 8
    steps_per_epoch: int = 20
    lr: float = 3e-3
    weight_decay: float = 1e-4
    class_weights: tuple = (1.0, 1.0, 3.0)
    val_fraction: float = 0.11
    holdout: Any = 0
    n_simulated: int = 8
    simulated_shape: tuple = (540, 960)
    gt_min_size: int = 30
    num_threads: int | None = None
    dice_weight: float = 1.0
    ignore_border: bool = True
    border_rule: Any = "logistic"
    val_every: int = 4

    #: the settings other than epochs/backbone/seed, as the checkpoint recipe's ``options``
    RUN_FIELDS: ClassVar[tuple[str, ...]] = ("epochs", "backbone", "seed")

    def __post_init__(self):
        if self.backbone not in (None, "", "unet"):
            raise RecipeError(f"the U-Net has no selectable backbone (got {self.backbone!r}); leave --backbone out")

    @classmethod
    def option_keys(cls) -> tuple[str, ...]:
        return tuple(k for k in cls.keys() if k not in cls.RUN_FIELDS)

    def options(self) -> dict:
        return {k: getattr(self, k) for k in self.option_keys()}

    def resolved(self) -> "UNetRecipe":
        return dataclasses.replace(self, epochs=int(self.epochs or 16))


#: a BMRecipe setting whose default depends on the schedule (see :meth:`BMRecipe.resolved`)
AUTO = "auto"


def _off_words(value):
    """ "0"/"false"/"no"/"off" (any case) -> False, other text -> True; non-text unchanged."""
    return value.lower() not in ("0", "false", "no", "off") if isinstance(value, str) else value


@dataclass(frozen=True)
class BMRecipe(Recipe):
    """Bone-marrow / white-cell classifier (training.bm; see its module docstring). ``"auto"``
    settings follow the schedule: the cosine recipe's stain/colour augmentation, background
    white balance, nucleus framing, scale jitter, output stride 16 (efficientnet-lite0) and
    background erasing, or the plateau recipe's plain values."""

    label: ClassVar[str] = "bm"

    epochs: int | None = None  # None: 30
    backbone: str | None = None  # None: efficientnet_lite0
    seed: int = 0
    input_size: int | None = None  # None: 64 for tiny archs on simulated data, else from the crops
    batch_size: int = 32
    lr: float | None = None  # None: 0.02 (cosine) or a learning-rate range test (plateau)
    augment: bool = True
    # The paper's RandomResizedCrop scale is (0.08, 1). On the WBC crops, where the cell fills
    # the frame and its size tells monocytes from lymphocytes, less zoom scored better in
    # nested cross-validation (docs/bm.md). Scale 1 keeps the whole crop (a square crop admits
    # no other aspect ratio at full area), so rotations and flips remain.
    crop_scale: Any = (1.0, 1.0)
    val_fraction: float = 0.2
    n_per_class: int = 64
    pretrained: bool = True
    weight_decay: float = 1e-4
    patience: int = 3
    tta: str = "d4"
    # the recipe (docs/bm.md): fixed cosine schedule with EMA weights, stain/colour
    # augmentation, background white balance and framing on the nucleus, scale jitter
    schedule: str = "cosine"
    ema: float = 0.98
    label_smoothing: float = 0.0
    split_seed: int = 0
    colour: Any = AUTO
    normalise: str = AUTO
    crop: str = AUTO
    scale_jitter: Any = AUTO
    output_stride: Any = AUTO
    bg_erase: Any = AUTO
    crop_factor: float = 2.0
    lr_test_steps: int = 30
    warmup_epochs: int = 0
    cache_size: int | None = None
    class_names: Any = None

    def sizes_from_crops(self, simulated: bool) -> bool:
        """The input size is to be taken from the crops (not given, real data, not ViT-L/32)."""
        from ..models.bm import canonical_arch

        arch = canonical_arch(self.backbone or "efficientnet_lite0")
        return self.input_size is None and not simulated and arch != "vit_l_32"

    def resolved(self, simulated: bool) -> "BMRecipe":
        """Every ``None``/``"auto"`` setting but ``lr`` filled in and checked; the input size is
        the arch's default where it is to come from the crops (the trainer then sets it)."""
        from ..models.bm import DEFAULT_INPUT_SIZE, canonical_arch, tta_mode

        arch = canonical_arch(self.backbone or "efficientnet_lite0")
        size = self.input_size
        if size is None:
            size = 64 if simulated and "tiny" in arch else DEFAULT_INPUT_SIZE[arch]
        if self.schedule not in ("cosine", "plateau"):
            raise RecipeError(f"schedule must be 'cosine' or 'plateau', not {self.schedule!r}")
        legacy = self.schedule == "plateau"

        def auto(value, default):
            return default if isinstance(value, str) and value == AUTO else value

        jitter = auto(self.scale_jitter, None if legacy else (0.8, 1.25))
        if isinstance(jitter, (int, float)):
            f = float(jitter)
            jitter = None if f in (0.0, 1.0) else (1.0 / f, f) if f > 1 else (f, 1.0 / f)
        r = dataclasses.replace(
            self,
            epochs=int(self.epochs or 30),
            backbone=arch,
            input_size=size,
            tta=tta_mode(self.tta),
            colour=_off_words(auto(self.colour, not legacy)),
            normalise=auto(self.normalise, "none" if legacy else "background"),
            crop=auto(self.crop, "none" if legacy else "nucleus"),
            scale_jitter=jitter,
            output_stride=auto(self.output_stride, 16 if arch == "efficientnet_lite0" and not legacy else 32),
            bg_erase=auto(self.bg_erase, 0.0 if legacy else 0.5),
            crop_scale=(float(self.crop_scale), 1.0) if isinstance(self.crop_scale, (int, float)) else self.crop_scale,
            augment=_off_words(self.augment),
        )
        if r.normalise not in ("none", "background"):
            raise RecipeError(f"normalise must be 'none' or 'background', not {r.normalise!r}")
        if r.crop not in ("none", "nucleus"):
            raise RecipeError(f"crop must be 'none' or 'nucleus', not {r.crop!r}")
        return r


RECIPES: dict[str, type[Recipe]] = {
    "detector": DetectorRecipe,
    "multilabel": MultilabelRecipe,
    "bm": BMRecipe,
    "unet": UNetRecipe,
}


def recipe_class(kind: str) -> type[Recipe] | None:
    """The recipe dataclass of a model kind, None for kinds without one."""
    return RECIPES.get(kind)


def check_keywords(kind: str, trainer, options: Mapping[str, Any]) -> None:
    """For a trainer without a recipe class: RecipeError naming the valid keys when an
    option is not one of ``trainer``'s keyword parameters."""
    import inspect

    params = inspect.signature(trainer).parameters.values()
    named = [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    unknown = sorted(k for k in options if k not in named)
    if unknown:
        valid = sorted(k for k in named if k not in ("data", "out", *RUN_KEYS))
        raise RecipeError(f"unknown {kind} option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")


def recipe_kwargs(kind: str, kwargs: Mapping[str, Any], trainer=None) -> dict:
    """A trainer call's keyword arguments with every recipe setting gathered into
    ``recipe=`` (unknown keys refused); for kinds without a recipe the keys are checked
    against ``trainer``'s keywords (when given) and passed on unchanged. ``None`` values
    of the CLI's common flags (not given) are left to the recipe's defaults."""
    cls = recipe_class(kind)
    if cls is None:
        if trainer is not None:
            check_keywords(kind, trainer, kwargs)
        return dict(kwargs)
    run = {k: v for k, v in kwargs.items() if k in RUN_KEYS}
    options = {k: v for k, v in kwargs.items() if k not in RUN_KEYS and not (v is None and k in ("epochs", "backbone"))}
    return {**run, "recipe": cls.from_options(options)}
