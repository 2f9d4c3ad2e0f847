"""Data of the bone-marrow / white-cell trainer: cells from every supported layout
(``training.bm`` lists them), cell masks stored beside the images, the training and validation
datasets and their augmentations, and the cells framed as inference frames them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..models.bm import tta_views

IMAGE_COLUMNS = ("image", "path", "file", "filename")
CLASS_COLUMNS = ("class_name", "label", "class")


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
