"""Train and evaluate the bone-marrow / white-cell classifier.

Recipe (``schedule="cosine"``, the default; docs/bm.md says why): every cell goes once through
the cell view of ``analysis.bm`` (white balance to the background, a window framed on the
stained nucleus and scaled by its area: ``normalise``, ``crop``, ``crop_factor``); SGD with
momentum 0.9 at a fixed lr (0.02 unless given), one epoch of linear warm-up and cosine decay to
zero; an exponential moving average of the weights (``ema``), whose value after the last epoch
is the model (nothing is chosen on validation cells); class-balanced ``WeightedRandomSampler``;
stain and colour augmentation (``colour``: :class:`StainJitter`), rotation with a random zoom
(``scale_jitter``) and flips; background erasing from cell masks stored beside the images
(``bg_erase``); efficientnet-lite0 at output stride 16 (``output_stride``).
``schedule="plateau"`` is the earlier recipe (Glüge et al. 2024): lr range test,
``ReduceLROnPlateau`` on the validation loss, ``best.pt`` = the best validation epoch,
``RandomResizedCrop`` (``crop_scale``), optional head warm-up (``warmup_epochs``).

``data`` layouts:

* class folders of single-cell crops (class = sub-folder name; grey label masks beside their
  images are not taken for cells);
* a CSV table (or a folder holding ``labels.csv``) with an image column (``image`` or
  ``path``) and a class column (``class_name``, ``label`` or ``class``); relative paths
  are resolved against the CSV's folder (the ``wbc-zheng2018`` layout);
* the Zheng 2018 folder as published (``Class Labels of Dataset N.csv`` + ``Dataset N/``);
* ``"simulated"``: :func:`napari_sickle.data.bm_sim.simulate_bm_cells`.

Other options (``**options``): ``input_size`` (default: the median crop side rounded down to
a multiple of 32, at most the arch's default), ``batch_size`` (32), ``lr``, ``augment``
(True), ``val_fraction`` (0.2; 0 trains on everything, cosine schedule only), ``split_seed``
(0: the held-out split does not change with ``seed``), ``n_per_class`` (simulated, 64),
``pretrained`` (True), ``weight_decay`` (1e-4), ``label_smoothing`` (0), ``class_names``,
``cache_size``, ``tta`` (``"d4"``: validation, ``evaluate_bm`` and ``classify_cells`` average
the softmax of each cell in the eight symmetries of the square; ``"flips"``; ``"none"``). ``epochs`` defaults to 30. Validation cells go
through ``analysis.bm.preprocess``, the code ``classify_cells`` uses, so the logged held-out
figures equal ``evaluate bm``'s.

With ``folds=k`` one model per fold is trained in ``out/fold<i>/``; metrics are computed
on the pooled out-of-fold predictions, and ``out/best.pt`` is the fold model with the
best held-out macro-F1. ``resume`` continues a single-split run from its ``last.pt``.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np

from .._progress import report
from ..models.bm import TTA_MODES, tta_mode, tta_views  # noqa: F401  (re-exported)

_HEAD_NAMES = {"vgg": "classifier.6", "resnet": "fc", "regnet": "fc", "vit": "heads.head", "efficientnet": "classifier"}


def family_of(arch: str) -> str:
    from ..models.bm import family

    return family(arch)


DEFAULT_ARCH = "efficientnet_lite0"
IMAGE_COLUMNS = ("image", "path", "file", "filename")
CLASS_COLUMNS = ("class_name", "label", "class")


# --------------------------------------------------------------------------- data
def _read_rgb(path) -> np.ndarray:
    from ..io.images import read_image, to_rgb_uint8

    return to_rgb_uint8(read_image(path))


def _table_from_csv(csv: Path):
    import pandas as pd

    from ..io.datasets import DatasetError

    df = pd.read_csv(csv)
    img_col = next((c for c in IMAGE_COLUMNS if c in df.columns), None)
    cls_col = next((c for c in CLASS_COLUMNS if c in df.columns), None)
    if img_col is None or cls_col is None:
        missing = (
            "an image column (" + "/".join(IMAGE_COLUMNS) + ")"
            if img_col is None
            else "a class column (" + "/".join(CLASS_COLUMNS) + ")"
        )
        raise DatasetError(f"{csv}: missing {missing}; columns are {list(df.columns)}")
    paths = [str((csv.parent / p).resolve()) if not Path(p).is_absolute() else str(p) for p in df[img_col].astype(str)]
    return pd.DataFrame({"path": paths, "label": df[cls_col].astype(str).values})


#: class numbers of the published Zheng 2018 tables ("Class Labels of Dataset N.csv")
ZHENG_CLASSES = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}
_IMAGE_FIRST = (".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".png")


def _table_from_published_zheng(root: Path):
    """The Zheng et al. 2018 folder as published (github.com/zxaoyou/segmentation_WBC):
    ``Class Labels of Dataset N.csv`` (``image ID``, ``class label`` 1-5) next to
    ``Dataset N/NNN.bmp`` images and ``NNN.png`` masks. Classes with fewer than two images
    (Dataset 1 has one basophil) are left out with a warning."""
    import warnings

    import pandas as pd

    from ..io.datasets import DatasetError

    rows = []
    for csv in sorted(root.glob("Class Labels of *.csv")):
        folder = root / csv.stem.replace("Class Labels of ", "")
        df = pd.read_csv(csv)
        cols = {c.strip().lower(): c for c in df.columns}
        id_col, cls_col = cols.get("image id"), cols.get("class label")
        if id_col is None or cls_col is None or not folder.is_dir():
            raise DatasetError(f"{csv}: expected columns 'image ID', 'class label' and a folder {folder.name}/")
        for i, c in zip(df[id_col], df[cls_col]):
            stem = f"{int(i):03d}"
            f = next((folder / (stem + e) for e in _IMAGE_FIRST if (folder / (stem + e)).is_file()), None)
            if f is not None:
                rows.append((str(f.resolve()), ZHENG_CLASSES.get(int(c), str(c))))
    table = pd.DataFrame(rows, columns=["path", "label"])
    counts = table["label"].value_counts()
    rare = sorted(counts[counts < 2].index)
    if rare:
        warnings.warn(f"{root}: class(es) {rare} have a single image and are left out.", UserWarning, stacklevel=3)
        table = table[~table["label"].isin(rare)].reset_index(drop=True)
    return table


def _is_label_mask(path) -> bool:
    """A grey image with at most three values (Zheng masks: 0, 128, 255)."""
    from ..io.images import read_image

    try:
        a = np.asarray(read_image(path))
    except (ValueError, OSError):
        return False
    if a.ndim == 3:
        if a.shape[-1] not in (3, 4) or not (
            np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])
        ):
            return False
        a = a[..., 0]
    return a.ndim == 2 and len(np.unique(a)) <= 3


def _drop_masks(table):
    """Leave out mask files kept next to their images in class folders (``NNN.png`` beside
    ``NNN.bmp``, as in the published Zheng folder), so they are not trained on as cells."""
    stems: dict = {}
    for path in table["path"]:
        q = Path(path)
        stems.setdefault((q.parent, q.stem), []).append(q)
    drop = set()
    for files in stems.values():
        if len(files) > 1:
            drop |= {str(q) for q in files if q.suffix.lower() == ".png" and _is_label_mask(q)}
    if not drop:
        return table
    out = table[~table["path"].isin(drop)].reset_index(drop=True)
    out.attrs = dict(table.attrs)
    return out


def load_bm_data(
    data,
    *,
    input_size: int = 64,
    n_per_class: int = 64,
    seed: int = 0,
    return_paths: bool = False,
    min_per_class: int = 2,
):
    """-> (images: list of (H,W,3) uint8, labels: list[str], class_names: tuple, skipped: int)
    (+ ``paths``: list of str, or of ``"simulated:<i>"``, with ``return_paths=True``).
    ``min_per_class``: training needs two images per class (one to train on, one to
    validate); a test set may have one."""
    import warnings

    from ..io.datasets import DatasetError, scan_class_folders

    if isinstance(data, str) and data == "simulated":
        from ..data.bm_sim import simulate_bm_cells

        sim = simulate_bm_cells(n_per_class=n_per_class, size=input_size, seed=seed)
        out = list(sim.images), [sim.class_names[i] for i in sim.labels], sim.class_names, 0
        return (*out, [f"simulated:{i}" for i in range(len(sim.labels))]) if return_paths else out
    p = Path(data).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder.")
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise DatasetError(f"{p}: expected a folder of class folders or a CSV table.")
        table = _table_from_csv(p)
    elif (p / "labels.csv").is_file():
        table = _table_from_csv(p / "labels.csv")
    elif sorted(p.glob("Class Labels of *.csv")):
        table = _table_from_published_zheng(p)
    else:
        table = _drop_masks(scan_class_folders(p))
    images, labels, paths, skipped = [], [], [], int(getattr(table, "attrs", {}).get("skipped", 0))
    for path, label in zip(table["path"], table["label"]):
        try:
            images.append(_read_rgb(path))
            labels.append(str(label))
            paths.append(str(path))
        except (ValueError, OSError) as exc:
            skipped += 1
            warnings.warn(f"skipped unreadable image {path}: {exc}", UserWarning, stacklevel=2)
    if not images:
        raise DatasetError(f"{p}: no readable images.")
    names = tuple(sorted(set(labels)))
    if len(names) < 2 and min_per_class > 1:
        raise DatasetError(f"{p}: need at least two classes, found {list(names)}.")
    counts = {c: labels.count(c) for c in names}
    few = [c for c, k in counts.items() if k < min_per_class]
    if few:
        raise DatasetError(f"{p}: class(es) {few} have a single image; need at least two per class.")
    return (images, labels, names, skipped, paths) if return_paths else (images, labels, names, skipped)


def _shrink(images, max_side):
    """Resize each image once so that its longer side is at most ``max_side`` (in-memory cache)."""
    if not max_side:
        return images
    from skimage.transform import resize

    out = []
    for im in images:
        s = max(im.shape[:2])
        if s <= max_side:
            out.append(im)
            continue
        f = max_side / s
        shape = (max(1, round(im.shape[0] * f)), max(1, round(im.shape[1] * f)))
        out.append((resize(im, shape, anti_aliasing=True, preserve_range=True) + 0.5).astype(np.uint8))
    return out


def channel_stats(images) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (in [0, 1]) over all pixels of the training images."""
    s = np.zeros(3)
    s2 = np.zeros(3)
    n = 0
    for im in images:
        f = im.reshape(-1, 3).astype(np.float64) / 255.0
        s += f.sum(0)
        s2 += (f**2).sum(0)
        n += f.shape[0]
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 1e-8))
    return tuple(float(x) for x in mean), tuple(float(x) for x in std)


class _CellDataset:
    """Training cells; with ``masks`` (cell = non-zero), ``erase_p`` of the draws of a masked
    cell have everything outside the cell (dilated by 2 px) replaced by ``fill``: the same
    cell without neighbouring red cells or debris, so the label cannot come from the context."""

    def __init__(self, images, targets, transform, masks=None, erase_p=0.0, fill=(255, 255, 255)):
        import torch

        self.x = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im in images]
        self.y = [int(t) for t in targets]
        self.transform = transform
        self.erase_p = float(erase_p)
        self.fill = torch.tensor(fill, dtype=torch.uint8).view(3, 1, 1)
        self.bg = [None] * len(self.x)
        for i, m in enumerate(masks or []):
            if m is not None:
                cell = torch.from_numpy(np.ascontiguousarray(m > 0)).float()[None, None]
                self.bg[i] = torch.nn.functional.max_pool2d(cell, 5, 1, 2)[0] == 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        import torch

        x = self.x[i]
        if self.bg[i] is not None and self.erase_p > 0 and float(torch.rand(())) < self.erase_p:
            x = torch.where(self.bg[i], self.fill, x)
        return self.transform(x), self.y[i]


def find_masks(paths) -> list:
    """The cell mask stored beside each image (``NNN.png`` next to ``NNN.bmp``, grey with at
    most three values, as in the Zheng 2018 folder), or None where there is none."""
    from ..io.images import read_image

    out = []
    for p in paths:
        q = Path(str(p)).with_suffix(".png")
        if str(p).startswith("simulated:") or q == Path(str(p)) or not q.is_file() or not _is_label_mask(q):
            out.append(None)
            continue
        a = np.asarray(read_image(q))
        out.append(a[..., 0] if a.ndim == 3 else a)
    return out


class StainJitter:
    """Random stain and colour changes of a float (3, H, W) image in [0, 1].

    * HED jitter (Tellez et al. 2018): the optical density is unmixed into haematoxylin, eosin
      and residual stain amounts (scikit-image's Ruifrok-Johnston matrix); each amount is
      scaled by U(1 - alpha, 1 + alpha) and shifted by U(-beta, beta), then mixed back;
    * random gamma exp(U(-log g, log g));
    * brightness, contrast and saturation factors U(1 - c, 1 + c) and a hue shift U(-h, h);
    * Gaussian blur (sigma U(0.1, 1.2)) with probability ``blur_p``.
    """

    def __init__(self, alpha=0.2, beta=0.03, gamma=1.4, colour=0.15, hue=0.03, blur_p=0.3):
        import torch
        from skimage.color import hed_from_rgb, rgb_from_hed

        self.alpha, self.beta, self.gamma, self.blur_p = alpha, beta, gamma, blur_p
        self.h_from_rgb = torch.tensor(hed_from_rgb, dtype=torch.float32)
        self.rgb_from_h = torch.tensor(rgb_from_hed, dtype=torch.float32)
        from torchvision.transforms import v2

        self.jitter = v2.ColorJitter(brightness=colour, contrast=colour, saturation=colour + 0.05, hue=hue)
        self.blur = v2.GaussianBlur(5, sigma=(0.1, 1.2))

    def __call__(self, x):
        import torch

        c, h, w = x.shape
        od = -torch.log(x.clamp(1e-3, 1.0)).permute(1, 2, 0).reshape(-1, 3)
        stains = od @ self.h_from_rgb
        a = 1.0 + (torch.rand(3) * 2 - 1) * self.alpha
        b = (torch.rand(3) * 2 - 1) * self.beta
        od = (stains * a + b) @ self.rgb_from_h
        x = torch.exp(-od.clamp_min(0)).reshape(h, w, 3).permute(2, 0, 1).clamp(0, 1)
        g = float(torch.exp((torch.rand(()) * 2 - 1) * math.log(self.gamma)))
        x = self.jitter(x.pow(g))
        if float(torch.rand(())) < self.blur_p:
            x = self.blur(x)
        return x.clamp(0, 1).contiguous()


def _transforms(size, mean, std, augment, crop_scale, *, colour=False, scale_jitter=None, fill=None):
    """Training augmentation (float in [0, 1] before any resampling, like ``preprocess``).

    ``colour``: :class:`StainJitter` first; ``scale_jitter`` (lo, hi): a random zoom (the cell
    drawn lo..hi times its size; > 1 zooms in) with the rotation, in place of the random crop.
    Validation does not use a transform: the held-out cells go through
    :func:`napari_sickle.analysis.bm.preprocess`, the very code ``classify_cells`` and
    ``evaluate bm`` use, so training validation and evaluation see identical tensors."""
    import torch
    from torchvision.transforms import v2

    head = [v2.ToDtype(torch.float32, scale=True)]
    tail = [v2.Normalize(list(mean), list(std))]
    fill = [float(m) for m in (mean if fill is None else fill)]
    if not augment:
        return v2.Compose([*head, v2.Resize((size, size), antialias=True), *tail])
    if colour:
        head.append(StainJitter())
    if scale_jitter:
        geo = [v2.Resize((size, size), antialias=True), v2.RandomAffine(180, scale=tuple(scale_jitter), fill=fill)]
    else:
        geo = [
            v2.RandomResizedCrop(size, scale=tuple(crop_scale), ratio=(0.75, 1.33), antialias=True),
            v2.RandomRotation(180, fill=fill),
        ]
    return v2.Compose([*head, *geo, v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), *tail])


class _ValDataset:
    """Held-out cells through ``analysis.bm.preprocess``, the code ``classify_cells`` and
    ``evaluate bm`` use, so training validation and evaluation compute the same numbers.
    With test-time augmentation each item is a (V, 3, S, S) stack of views."""

    def __init__(self, images, targets, model, tta="none"):
        self.images, self.y, self.model, self.tta = images, [int(t) for t in targets], model, tta

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from ..analysis.bm import preprocess

        x = preprocess(tta_views(self.images[i], self.tta), self.model)
        return (x if self.tta != "none" else x[0]), self.y[i]


# --------------------------------------------------------------------------- lr range test
def lr_range_test(
    model, loader, criterion, device, *, start=1e-5, end=1.0, steps=40, momentum=0.9, weight_decay=1e-4
) -> float:
    """Exponential lr sweep on a copy of the weights; a tenth of the lr at the lowest smoothed loss."""
    import copy

    import torch

    state = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=start, momentum=momentum, weight_decay=weight_decay)
    gamma = (end / start) ** (1.0 / max(steps - 1, 1))
    lrs, losses, smooth, best = [], [], None, math.inf
    model.train()
    it = iter(loader)
    for i in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        lr = start * gamma**i
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        loss = criterion(model(x.to(device)), y.to(device))
        loss.backward()
        opt.step()
        v = float(loss.detach())
        smooth = v if smooth is None else 0.7 * smooth + 0.3 * v
        lrs.append(lr)
        losses.append(smooth)
        best = min(best, smooth)
        if not math.isfinite(v) or smooth > 4 * best:
            break
    model.load_state_dict(state)
    if len(losses) < 4:
        return 1e-3
    # Smith's rule as fastai applies it: a tenth of the lr at the lowest smoothed loss. (The
    # steepest-descent point is noise on a flat curve, e.g. after a head warm-up: measured,
    # it picked the 1e-4 floor there.)
    lr = float(lrs[int(np.argmin(losses))]) / 10.0
    return float(min(max(lr, 1e-4), 0.1))


# --------------------------------------------------------------------------- one fit
def _evaluate_loader(model, loader, criterion, device):
    import torch

    model.eval()
    total, n, ys, probs = 0.0, 0, [], []
    with torch.no_grad():
        for x, y in loader:
            if x.ndim == 5:  # (B, V, 3, S, S) test-time views: mean of the views' softmax
                b, v = x.shape[:2]
                prob = torch.softmax(model(x.flatten(0, 1).to(device)).float(), 1).view(b, v, -1).mean(1)
                total += float(torch.nn.functional.nll_loss(torch.log(prob.clamp_min(1e-12)), y.to(device))) * len(y)
            else:
                out = model(x.to(device)).float()
                total += float(criterion(out, y.to(device))) * len(y)
                prob = torch.softmax(out, 1)
            n += len(y)
            probs.append(prob.cpu().numpy())
            ys.append(y.numpy())
    p = np.concatenate(probs)
    return total / max(n, 1), p, np.concatenate(ys)


def _metrics(y_true, y_pred, class_names) -> dict:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    pr, rc, f1, sup = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return {
        "macro_f1": float(mf),
        "macro_precision": float(mp),
        "macro_recall": float(mr),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "per_class": {
            c: {"precision": float(pr[i]), "recall": float(rc[i]), "f1": float(f1[i]), "support": int(sup[i])}
            for i, c in enumerate(class_names)
        },
        "n": int(len(y_true)),
    }


def _fit(
    train_imgs,
    train_y,
    val_imgs,
    val_y,
    class_names,
    out: Path,
    *,
    arch,
    epochs,
    device,
    seed,
    resume,
    progress,
    log,
    opts,
    stage="train",
    data_desc="",
    train_masks=None,
):
    import torch

    from .._device import resolve_device
    from ..models.bm import build_bm_model
    from ..models.checkpoint import load_checkpoint, save_checkpoint
    from . import distributed as ddp_glue

    torch.manual_seed(seed)
    np.random.seed(seed)
    dev = resolve_device(device)
    size = int(opts["input_size"])
    model = build_bm_model(arch, class_names, pretrained=opts["pretrained"], input_size=size)
    model.normalise, model.crop, model.crop_factor = opts["normalise"], opts["crop"], float(opts["crop_factor"])
    from ..models.bm import set_output_stride

    set_output_stride(model, int(opts["output_stride"]))
    if model.normalise != "none" or model.crop != "none" or train_masks is not None:
        # the cell as every later path sees it (analysis.bm.cell_view), once, at the input size
        train_imgs, train_masks = _canonical(train_imgs, model, size, train_masks)
    mean, std = channel_stats(train_imgs)
    model.mean, model.std = tuple(mean), tuple(std)
    net = model.module.to(dev)
    if family_of(model.arch) != "vit":  # less CPU per training step for CNNs (docs/bm.md)
        net = net.to(memory_format=torch.channels_last)
    train_tf = _transforms(
        size,
        mean,
        std,
        opts["augment"],
        opts["crop_scale"],
        colour=opts["colour"],
        scale_jitter=opts["scale_jitter"],
        fill=(1.0, 1.0, 1.0) if model.normalise == "background" else None,
    )
    counts = np.bincount(train_y, minlength=len(class_names)).astype(float)
    weights = 1.0 / counts[np.asarray(train_y)]
    # class-balanced draw, reseeded per epoch (set_epoch) and split over torchrun ranks
    sampler = ddp_glue.weighted_sampler(weights, len(train_y), seed=seed)
    bs = int(opts["batch_size"])  # per rank: the global batch is bs x world size
    erase = float(opts["bg_erase"]) if train_masks is not None else 0.0
    fill = (255, 255, 255) if model.normalise == "background" else tuple(int(255 * m + 0.5) for m in mean)
    train_loader = torch.utils.data.DataLoader(
        _CellDataset(train_imgs, train_y, train_tf, train_masks, erase, fill),
        batch_size=bs,
        sampler=sampler,
        drop_last=len(sampler) > bs,
    )
    val_loader = torch.utils.data.DataLoader(_ValDataset(val_imgs, val_y, model, opts["tta"]), batch_size=bs)
    criterion = torch.nn.CrossEntropyLoss()
    if opts["schedule"] == "cosine":
        return _fit_fixed(
            model,
            net,
            train_loader,
            val_loader,
            class_names,
            out,
            dev=dev,
            epochs=epochs,
            seed=seed,
            resume=resume,
            progress=progress,
            log=log,
            opts=opts,
            stage=stage,
            data_desc=data_desc,
            n_train=len(train_y),
            n_val=len(val_y),
        )
    start_epoch, history, best_metric = 0, [], -math.inf
    ckpt = None
    if resume:
        ckpt = load_checkpoint(resume, kind="bm")
        if list(ckpt["config"].get("class_names", [])) != list(class_names):
            raise ValueError(
                f"--resume {resume}: its classes {ckpt['config'].get('class_names')} differ "
                f"from the data's {list(class_names)}."
            )
        net.load_state_dict(ckpt["state_dict"])
        lr = float(ckpt["recipe"]["lr"])
    elif opts["lr"] is not None:
        lr = float(opts["lr"])
    else:
        report(progress, "lr range test", 0, 1)
        lr = ddp_glue.broadcast(
            lr_range_test(net, train_loader, criterion, dev, steps=int(opts.get("lr_test_steps", 30)))
            if ddp_glue.is_main()
            else None
        )  # rank 0's lr on every rank
        for prm in net.parameters():
            prm.grad = None
        report(progress, "lr range test", 1, 1)
        if log:
            log({"event": "lr_range_test", "lr": lr})
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=float(opts["weight_decay"]))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=int(opts["patience"]))
    if ckpt is not None:
        ex = ckpt["extra"]
        opt.load_state_dict(ex["optimizer"])
        sched.load_state_dict(ex["scheduler"])
        start_epoch = int(ex["epoch"])
        history = list(ex.get("history", []))
        best_metric = float(ex.get("best_metric", -math.inf))
    warm = min(int(opts.get("warmup_epochs") or 0), int(epochs))
    head_name = _HEAD_NAMES[family_of(model.arch)]
    recipe = {
        "arch": model.arch,
        "optimizer": "SGD",
        "momentum": 0.9,
        "lr": lr,
        "lr_source": "given" if opts["lr"] is not None else "range test",
        "weight_decay": float(opts["weight_decay"]),
        "scheduler": "ReduceLROnPlateau(factor=0.1, patience=%d)" % int(opts["patience"]),
        "sampler": "WeightedRandomSampler",
        "augment": bool(opts["augment"]),
        "crop_scale": list(opts["crop_scale"]),
        "rotation": [0, 180],
        "flips": ["h", "v"],
        "epochs": int(epochs),
        "batch_size": bs,
        "input_size": size,
        "seed": int(seed),
        "pretrained": bool(opts["pretrained"]),
        "data": data_desc,
        "n_train": len(train_y),
        "n_val": len(val_y),
        "warmup_epochs": warm,
        "warmup": f"first {warm} epoch(s) train only `{head_name}` (backbone frozen), "
        "then all layers (a second range test sets their lr unless lr is given)"
        if warm
        else "none",
        "lr_test_steps": int(opts.get("lr_test_steps", 30)),
        "cache_size": opts.get("cache_size"),
        "val_paths": list(opts.get("_val_paths") or []),
        "tta": opts["tta"],
    }
    model.recipe = recipe
    steps_per_epoch = len(train_loader)
    last_p = None
    ddp_net = ddp_glue.wrap(net, find_unused_parameters=bool(warm))  # DDP under torchrun, else net itself
    if ddp_glue.context().enabled:
        torch.manual_seed(seed + 1_000_003 * ddp_glue.rank())  # each rank its own augmentations
    for epoch in range(start_epoch, epochs):
        ddp_glue.set_epoch(train_loader, epoch)
        head_only = epoch < warm
        for name, prm in net.named_parameters():
            prm.requires_grad_(not head_only or name.startswith(head_name + "."))
        if warm and epoch == warm:
            # a fresh plateau counter for the fine-tuning phase: the head-only epochs'
            # validation losses must not count towards its patience
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=0.1, patience=int(opts["patience"])
            )
        if warm and epoch == warm and opts["lr"] is None and ckpt is None:
            # fine-tuning phase: a second short range test, now over all layers
            lr2 = ddp_glue.broadcast(
                lr_range_test(net, train_loader, criterion, dev, steps=int(opts.get("lr_test_steps", 30)))
                if ddp_glue.is_main()
                else None
            )
            for prm in net.parameters():
                prm.grad = None
            for grp in opt.param_groups:
                grp["lr"] = lr2
            recipe["lr_finetune"] = lr2
            if log:
                log({"event": "lr_range_test", "lr": lr2, "phase": "all"})
        net.train()
        tot, n = 0.0, 0
        for step, (x, y) in enumerate(train_loader):
            opt.zero_grad()
            loss = criterion(ddp_net(x.to(dev)), y.to(dev))
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(y)
            n += len(y)
            ddp_glue.note_step(len(y))
            report(progress, stage, epoch * steps_per_epoch + step + 1, epochs * steps_per_epoch)
        train_loss = ddp_glue.reduce_mean(tot, n)  # over all ranks
        val_loss, p, yv = ddp_glue.evaluate_sharded(lambda ld: _evaluate_loader(net, ld, criterion, dev), val_loader)
        sched.step(val_loss)
        m = _metrics(yv, p.argmax(1), class_names)
        rec = {
            "event": "epoch",
            "epoch": epoch + 1,
            "epochs": int(epochs),
            "phase": "head" if head_only else "all",
            "loss": train_loss,
            "val_loss": val_loss,
            "metric": m["macro_f1"],
            "metric_name": "macro_f1",
            "accuracy": m["accuracy"],
            "lr": opt.param_groups[0]["lr"],
        }
        history.append(rec)
        if log:
            log(dict(rec))
        improved = m["macro_f1"] > best_metric
        if improved:
            best_metric = m["macro_f1"]
            model.metrics = {k: v for k, v in m.items()}
            model.metrics["epoch"] = epoch + 1
            if ddp_glue.is_main():
                model.save(out / "best.pt")
            last_p = p
        model_last = model.to_checkpoint(
            extra={
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "best_metric": best_metric,
            }
        )
        model_last["metrics"] = m
        if ddp_glue.is_main():
            save_checkpoint(model_last, out / "last.pt")
    if last_p is None:  # resumed after the last epoch: evaluate the best checkpoint
        from ..models.bm import load_bm_model

        best = load_bm_model(out / "best.pt")
        _, last_p, _ = _evaluate_loader(best.module.to(dev), val_loader, criterion, dev)
    return {"best_metric": best_metric, "history": history, "val_proba": last_p, "lr": lr}


def _canonical(images, model, size, masks=None):
    """Training images through ``analysis.bm.cell_view`` and the resize of ``preprocess``,
    back to uint8: the augmentations then start from the cell exactly as inference frames it.
    Masks (optional) get the same window and size (nearest neighbour)."""
    import torch
    import torch.nn.functional as F

    from ..analysis.bm import cell_view, crop_window

    out, out_masks = [], []
    for k, im in enumerate(images):
        f, box = cell_view(im, model)
        t = torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1)[None]
        if t.shape[-2:] != (size, size):
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append((t[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
        m = None if masks is None else masks[k]
        if m is not None:
            m3 = np.repeat((m > 0).astype(np.float32)[..., None], 3, -1)
            if box is not None:
                m3 = crop_window(m3, box[0], box[1], box[2], fill=0.0)
            mt = torch.from_numpy(np.ascontiguousarray(m3[..., 0]))[None, None]
            m = F.interpolate(mt, size=(size, size), mode="nearest")[0, 0].numpy() > 0.5
        out_masks.append(m)
    return out, out_masks


def _fit_fixed(
    model,
    net,
    train_loader,
    val_loader,
    class_names,
    out: Path,
    *,
    dev,
    epochs,
    seed,
    resume,
    progress,
    log,
    opts,
    stage,
    data_desc,
    n_train,
    n_val,
):
    """Fixed schedule: SGD, one epoch of linear warm-up, cosine decay to zero, an exponential
    moving average (EMA) of the weights; the EMA weights after the last epoch are the model
    (no checkpoint is chosen on the validation cells, which are only scored, once, at the end)."""
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from ..models.checkpoint import load_checkpoint, save_checkpoint
    from . import distributed as ddp_glue

    lr = float(opts["lr"]) if opts["lr"] is not None else 0.02
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=float(opts["label_smoothing"]))
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=float(opts["weight_decay"]))
    steps_per_epoch = len(train_loader)
    total = max(1, epochs * steps_per_epoch)
    warm = steps_per_epoch

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    decay = float(opts["ema"])
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True) if decay > 0 else None
    start_epoch, history = 0, []
    if resume:
        ckpt = load_checkpoint(resume, kind="bm")
        if list(ckpt["config"].get("class_names", [])) != list(class_names):
            raise ValueError(
                f"--resume {resume}: its classes {ckpt['config'].get('class_names')} differ "
                f"from the data's {list(class_names)}."
            )
        ex = ckpt["extra"]
        net.load_state_dict(ex.get("raw_state_dict") or ckpt["state_dict"])
        opt.load_state_dict(ex["optimizer"])
        sched.load_state_dict(ex["scheduler"])
        if ema is not None and ex.get("ema_state") is not None:
            ema.load_state_dict(ex["ema_state"])
        start_epoch, history = int(ex["epoch"]), list(ex.get("history", []))
    model.recipe = {
        "arch": model.arch,
        "optimizer": "SGD",
        "momentum": 0.9,
        "lr": lr,
        "lr_source": "given" if opts["lr"] is not None else "fixed default",
        "weight_decay": float(opts["weight_decay"]),
        "schedule": "cosine",
        "scheduler": "linear warm-up 1 epoch, cosine decay to 0 (per step)",
        "ema": decay,
        "label_smoothing": float(opts["label_smoothing"]),
        "selection": "last epoch (EMA weights)",
        "sampler": "WeightedRandomSampler",
        "augment": bool(opts["augment"]),
        "colour": bool(opts["colour"]),
        "scale_jitter": list(opts["scale_jitter"] or []),
        "rotation": [0, 180],
        "flips": ["h", "v"],
        "normalise": model.normalise,
        "crop": model.crop,
        "output_stride": int(model.output_stride),
        "crop_factor": float(model.crop_factor),
        "bg_erase": float(opts["bg_erase"]),
        "n_masks": int(opts.get("_n_masks", 0)),
        "epochs": int(epochs),
        "batch_size": int(opts["batch_size"]),
        "input_size": int(model.input_size),
        "seed": int(seed),
        "split_seed": int(opts["split_seed"]),
        "pretrained": bool(opts["pretrained"]),
        "data": data_desc,
        "n_train": n_train,
        "n_val": n_val,
        "val_paths": list(opts.get("_val_paths") or []),
        "tta": opts["tta"],
    }
    ddp_net = ddp_glue.wrap(net)
    if ddp_glue.context().enabled:
        torch.manual_seed(seed + 1_000_003 * ddp_glue.rank())
    for epoch in range(start_epoch, epochs):
        ddp_glue.set_epoch(train_loader, epoch)
        net.train()
        tot, n = 0.0, 0
        for step, (x, y) in enumerate(train_loader):
            opt.zero_grad()
            loss = criterion(ddp_net(x.to(dev)), y.to(dev))
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(net)
            tot += float(loss.detach()) * len(y)
            n += len(y)
            ddp_glue.note_step(len(y))
            report(progress, stage, epoch * steps_per_epoch + step + 1, epochs * steps_per_epoch)
        rec = {
            "event": "epoch",
            "epoch": epoch + 1,
            "epochs": int(epochs),
            "phase": "all",
            "loss": ddp_glue.reduce_mean(tot, n),
            "lr": opt.param_groups[0]["lr"],
        }
        history.append(rec)
        if log:
            log(dict(rec))
        if ddp_glue.is_main():
            final = ema.module if ema is not None else net
            ck = model.to_checkpoint(
                extra={
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch + 1,
                    "history": history,
                    "raw_state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                    "ema_state": ema.state_dict() if ema is not None else None,
                }
            )
            ck["state_dict"] = {k: v.detach().cpu() for k, v in final.state_dict().items()}
            save_checkpoint(ck, out / "last.pt")
    final = ema.module if ema is not None else net
    net.load_state_dict(final.state_dict())  # model.module is net: it now holds the final weights
    if n_val:
        val_loss, p, yv = ddp_glue.evaluate_sharded(lambda ld: _evaluate_loader(net, ld, criterion, dev), val_loader)
        m = _metrics(yv, p.argmax(1), class_names)
        m["val_loss"] = val_loss
    else:
        p, m = np.zeros((0, len(class_names))), {"n": 0}
    m["epoch"] = int(epochs)
    model.metrics = m
    if log and n_val:
        log(
            {
                "event": "heldout",
                "metric": m["macro_f1"],
                "metric_name": "macro_f1",
                "accuracy": m["accuracy"],
                "n": m["n"],
            }
        )
    if ddp_glue.is_main():
        model.save(out / "best.pt")
    return {"best_metric": m.get("macro_f1", float("nan")), "history": history, "val_proba": p, "lr": lr}


def _options(options: dict, arch: str, simulated: bool) -> dict:
    from ..models.bm import DEFAULT_INPUT_SIZE, canonical_arch

    opts = dict(options)
    opts.setdefault("input_size", 64 if simulated and "tiny" in arch else None)
    # not given: the crops' own size (see train_bm), never more than the arch's default
    opts["_auto_size"] = opts["input_size"] is None and not simulated and canonical_arch(arch) != "vit_l_32"
    if opts["input_size"] is None:
        opts["input_size"] = DEFAULT_INPUT_SIZE[canonical_arch(arch)]
    opts.setdefault("batch_size", 32)
    opts.setdefault("lr", None)
    opts.setdefault("augment", True)
    # The paper's RandomResizedCrop scale is (0.08, 1). On the WBC crops, where the cell fills
    # the frame and its size tells monocytes from lymphocytes, less zoom scored better in
    # nested cross-validation (docs/bm.md). Scale 1 keeps the whole crop (a square crop admits
    # no other aspect ratio at full area), so rotations and flips remain.
    opts.setdefault("crop_scale", (1.0, 1.0))
    opts.setdefault("val_fraction", 0.2)
    opts.setdefault("n_per_class", 64)
    opts.setdefault("pretrained", True)
    opts.setdefault("weight_decay", 1e-4)
    opts.setdefault("patience", 3)
    opts["tta"] = tta_mode(opts.get("tta", "d4"))
    # the recipe (docs/bm.md): fixed cosine schedule with EMA weights, stain/colour
    # augmentation, background white balance and framing on the nucleus, scale jitter
    opts.setdefault("schedule", "cosine")
    if opts["schedule"] not in ("cosine", "plateau"):
        raise ValueError(f"schedule must be 'cosine' or 'plateau', not {opts['schedule']!r}")
    opts.setdefault("ema", 0.98)
    opts.setdefault("label_smoothing", 0.0)
    opts.setdefault("split_seed", 0)
    legacy = opts["schedule"] == "plateau"
    opts.setdefault("colour", not legacy)
    opts.setdefault("normalise", "none" if legacy else "background")
    opts.setdefault("crop", "none" if legacy else "nucleus")
    opts.setdefault("scale_jitter", None if legacy else (0.8, 1.25))
    opts.setdefault("output_stride", 16 if canonical_arch(arch) == "efficientnet_lite0" and not legacy else 32)
    opts.setdefault("bg_erase", 0.0 if legacy else 0.5)
    opts.setdefault("crop_factor", 2.0)
    for key in ("colour",):
        if isinstance(opts[key], str):
            opts[key] = opts[key].lower() not in ("0", "false", "no", "off")
    if isinstance(opts["scale_jitter"], (int, float)):
        f = float(opts["scale_jitter"])
        opts["scale_jitter"] = None if f in (0.0, 1.0) else (1.0 / f, f) if f > 1 else (f, 1.0 / f)
    if opts["normalise"] not in ("none", "background"):
        raise ValueError(f"normalise must be 'none' or 'background', not {opts['normalise']!r}")
    if opts["crop"] not in ("none", "nucleus"):
        raise ValueError(f"crop must be 'none' or 'nucleus', not {opts['crop']!r}")
    if isinstance(opts["crop_scale"], (int, float)):
        opts["crop_scale"] = (float(opts["crop_scale"]), 1.0)
    if isinstance(opts["augment"], str):
        opts["augment"] = opts["augment"].lower() not in ("0", "false", "no", "off")
    return opts


def train_bm(
    data,
    out,
    *,
    epochs=None,
    device="auto",
    backbone=None,
    seed=0,
    resume=None,
    folds=None,
    progress=None,
    log=None,
    **options,
) -> dict:
    """Train a BM classifier; see the module docstring. Returns checkpoint, metrics, history, seconds."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    from ..models.bm import canonical_arch

    t0 = time.perf_counter()
    arch = canonical_arch(backbone or DEFAULT_ARCH)
    simulated = isinstance(data, str) and data == "simulated"
    opts = _options(options, arch, simulated)
    epochs = int(epochs or 30)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if resume is not None and not Path(resume).is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint file.")
    if resume is not None and folds:
        raise ValueError("--resume continues a single-split run; it cannot be combined with --folds.")
    images, labels, names, skipped, paths = load_bm_data(
        data, input_size=int(opts["input_size"]), n_per_class=int(opts["n_per_class"]), seed=seed, return_paths=True
    )
    images = _shrink(images, opts.get("cache_size"))
    masks = find_masks(paths) if float(opts["bg_erase"]) > 0 and not opts.get("cache_size") else [None] * len(paths)
    opts["_n_masks"] = sum(m is not None for m in masks)
    if opts["_n_masks"] == 0:
        masks = None
    if opts.pop("_auto_size"):
        # The median crop side rounded down to the network stride (32): crops are not
        # upsampled, which costs compute and adds no detail (120 px WBC crops -> 96).
        side = int(np.median([max(im.shape[:2]) for im in images]))
        opts["input_size"] = int(min(opts["input_size"], max(32, side // 32 * 32)))
    if opts.get("class_names"):
        extra = sorted(set(labels) - set(opts["class_names"]))
        if extra:
            raise ValueError(f"classes {extra} in the data are not in class_names")
        names = tuple(opts["class_names"])
    y = np.array([names.index(lab) for lab in labels])
    desc = str(data)
    common = dict(
        arch=arch, epochs=epochs, device=device, seed=seed, progress=progress, log=log, opts=opts, data_desc=desc
    )
    if folds:
        k = int(folds)
        skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        oof = np.zeros((len(y), len(names)))
        fold_best, history = [], []
        for i, (tr, va) in enumerate(skf.split(np.zeros(len(y)), y)):
            if log:
                log({"event": "fold", "fold": i + 1, "folds": k})
            res = _fit(
                [images[j] for j in tr],
                y[tr],
                [images[j] for j in va],
                y[va],
                names,
                out / f"fold{i + 1}",
                train_masks=None if masks is None else [masks[j] for j in tr],
                resume=None,
                stage=f"fold {i + 1}/{k}",
                **common,
            )
            oof[va] = res["val_proba"]
            fold_best.append(res["best_metric"])
            history += [dict(h, fold=i + 1) for h in res["history"]]
        metrics = _metrics(y, oof.argmax(1), names)
        metrics["folds"] = k
        metrics["fold_macro_f1"] = [float(f) for f in fold_best]
        best_fold = int(np.argmax(fold_best)) + 1
        from . import distributed as ddp_glue

        if ddp_glue.is_main():  # rank 0 wrote the fold checkpoints
            shutil.copyfile(out / f"fold{best_fold}" / "best.pt", out / "best.pt")
            shutil.copyfile(out / f"fold{best_fold}" / "last.pt", out / "last.pt")
        metrics["checkpoint_fold"] = best_fold
    else:
        idx = np.arange(len(y))
        if float(opts["val_fraction"]) > 0:
            # the split depends on split_seed only, so runs with different training seeds are
            # scored on the same held-out cells
            tr, va = train_test_split(
                idx, test_size=float(opts["val_fraction"]), stratify=y, random_state=int(opts["split_seed"])
            )
        elif opts["schedule"] == "cosine":  # train on everything; nothing held out
            tr, va = idx, idx[:0]
        else:
            raise ValueError("val_fraction=0 needs schedule='cosine' (the plateau schedule selects on validation).")
        opts["_val_paths"] = [paths[j] for j in va]
        res = _fit(
            [images[j] for j in tr],
            y[tr],
            [images[j] for j in va],
            y[va],
            names,
            out,
            train_masks=None if masks is None else [masks[j] for j in tr],
            resume=resume,
            **common,
        )
        metrics = _metrics(y[va], res["val_proba"].argmax(1), names) if len(va) else {"n": 0}
        history = res["history"]
        heldout = {"val_paths": opts["_val_paths"], "val_proba": res["val_proba"]}
    metrics["skipped"] = int(skipped)
    return {
        "checkpoint": str(out / "best.pt"),
        "metrics": metrics,
        "history": history,
        "seconds": time.perf_counter() - t0,
        **({} if folds else heldout),
    }


def evaluate_bm(
    model,
    data,
    device="auto",
    *,
    batch_size: int = 32,
    progress=None,
    split: str = "all",
    tta=None,
    predictions: bool = False,
) -> dict:
    """Macro/per-class precision, recall, F1 and accuracy of ``model`` on ``data``.

    ``split="heldout"`` keeps only the images that the checkpoint's training run held out
    for validation (the ``val_paths`` stored in its recipe), so the figure is not computed
    on training images; ``"all"`` (default) uses every image of ``data``.
    ``tta``: None uses the checkpoint's own setting (recipe ``tta``, as its training
    validation did); ``"flips"`` averages the softmax of the cell and its three flips,
    ``"none"`` classifies the cell as it is. ``predictions=True`` adds ``"predictions"``: one
    ``{"path", "label", "predicted"}`` per image (to pool several test sets)."""
    from ..analysis.bm import classify_cells
    from ..models.bm import load_bm_model

    clf = load_bm_model(model)
    images, labels, _, skipped, paths = load_bm_data(
        data, input_size=clf.input_size, return_paths=True, min_per_class=1
    )
    if split not in ("all", "heldout"):
        raise ValueError(f"split must be 'all' or 'heldout', not {split!r}")
    if split == "heldout":
        keep = set((getattr(clf, "recipe", None) or {}).get("val_paths") or [])
        if not keep:
            raise ValueError(
                f"{model}: its recipe lists no held-out images (trained with --folds or an older "
                "version); use split='all' on separate test data."
            )
        sel = [i for i, pth in enumerate(paths) if pth in keep]
        if not sel:
            raise ValueError(f"none of the checkpoint's {len(keep)} held-out images is in {data}.")
        images, labels, paths = [images[i] for i in sel], [labels[i] for i in sel], [paths[i] for i in sel]
    names = list(clf.class_names)
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise ValueError(f"the data has classes {unknown} that the model does not know ({names}).")
    res = classify_cells(images, clf, batch_size=batch_size, device=device, progress=progress, tta=tta)
    proba = res.probabilities
    mode = tta_mode((getattr(clf, "recipe", None) or {}).get("tta", "none") if tta is None else tta)
    y = np.array([names.index(lab) for lab in labels])
    m = _metrics(y, proba.argmax(1), names)
    m["tta"] = mode
    if predictions:
        m["predictions"] = [
            {"path": str(pth), "label": lab, "predicted": names[int(k)]}
            for pth, lab, k in zip(paths, labels, proba.argmax(1))
        ]
    if skipped:
        m["skipped"] = int(skipped)
    return m
