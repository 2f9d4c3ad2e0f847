"""Streaming batch analysis of many smears (the engine of ``python -m napari_sickle.analyze``).

* Images are read by a ``torch.utils.data.DataLoader`` over :class:`SmearImages`
  (``num_workers`` reader processes): decoding, the RGB conversion and the cell-pixel mask
  happen there, so reading the next images overlaps detection and classification of the
  current ones.
* Regions are detected per image (the same :func:`analysis.smear.detect_regions` as the
  widget) and classified for up to ``images_per_batch`` images at a time: the crops of all of
  them go through the classifier backbone in batches of ``batch_size`` regions.
* Every image's results are written as soon as it is classified, each file atomically
  (temporary file + rename, :func:`napari_sickle._atomic.atomic_write`):
  ``<name>_regions.csv``, ``<name>_overlay.png`` and last the marker
  ``.sickle-batch/<name>.json`` holding its summary row, where ``<name>`` is the input's file
  name with its extension (``x.png`` and ``x.jpg`` in one folder get separate results). An image
  counts as done when its marker exists; a restarted run skips every done image and does the
  others. The regions of each image are classified on their own (never batched with another
  image's), so an image's numbers do not depend on which images were done before a restart.
* An unreadable image gets an error marker ``.sickle-batch/<name>.error.json`` with the file's
  size and modification time: a rerun does not retry it (and loads no model for it) until the
  file changes. ``summary.csv`` is rebuilt from the markers, in input order, at the end of each
  run; unreadable images are counted, listed there with their error, and skipped.
* Images above :func:`max_pixels` (default :data:`MAX_PIXELS`, ``NAPARI_SICKLE_MAX_PIXELS``) are
  refused before they are decoded, as unreadable; see docs/reliability.md.
* Memory does not grow with the number of images: only the images in flight are held, plus a
  small summary row per image.
* On a CPU the groups are shared among several analysing processes (by default one per core,
  :func:`default_processes`), each with its own models and one torch thread: on a 2-core machine
  two single-threaded processes analyse more images per minute than one process using both
  cores for each image (intra-op threading of the detector scales poorly). The inputs form
  fixed groups of ``images_per_batch`` consecutive images, the unit that processes and
  ``torchrun`` ranks take turns on.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ..constants import IMAGE_EXTENSIONS

IMAGE_SUFFIXES = frozenset(IMAGE_EXTENSIONS)
STATE_DIR = ".sickle-batch"
#: Largest image (width x height) analysed by default; larger ones are refused before decoding.
MAX_PIXELS = 50_000_000


class InputError(ValueError):
    """The inputs cannot be analysed as given (e.g. two files would write the same results)."""


def max_pixels(value: int | None = None) -> int:
    """The pixel limit: ``value``, else ``NAPARI_SICKLE_MAX_PIXELS``, else :data:`MAX_PIXELS`."""
    if value is None:
        env = os.environ.get("NAPARI_SICKLE_MAX_PIXELS", "").strip()
        try:
            value = int(float(env)) if env else MAX_PIXELS
        except ValueError:
            raise InputError(f"NAPARI_SICKLE_MAX_PIXELS={env!r} is not a number of pixels") from None
    if int(value) < 1:
        raise InputError(f"the pixel limit must be at least 1, got {value}")
    return int(value)


_pixel_limit = max_pixels  # for functions whose ``max_pixels`` argument hides the name


def image_pixels(path) -> int | None:
    """Width x height from the file's header (nothing is decoded); None if it cannot be told."""
    import warnings

    from ..io.images import sniff_format

    try:
        fmt = sniff_format(path)
        if fmt == "TIFF":
            import tifffile

            with tifffile.TiffFile(path) as tf:
                shape = tf.series[0].shape if tf.series else tf.pages[0].shape
            dims = [d for d in shape if d > 4] or list(shape)
            return int(np.prod(dims[-2:])) if len(dims) >= 2 else None
        if fmt is None:
            return None
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning: the limit here is ours
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as im:
                    w, h = im.size
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        return int(w) * int(h)
    except Exception:  # noqa: BLE001 - unreadable headers are reported by the decoder
        return None


def check_pixels(path, limit: int | None = None) -> None:
    """ImageReadError naming the file when its header says it exceeds the pixel limit."""
    from ..io.images import ImageReadError

    limit = max_pixels(limit)
    n = image_pixels(path)
    if n is not None and n > limit:
        raise ImageReadError(
            f"{path}: {n / 1e6:.1f} megapixels exceeds the limit of {limit / 1e6:g} megapixels "
            "(memory grows with the image; raise it with --max-pixels or "
            "NAPARI_SICKLE_MAX_PIXELS, see docs/reliability.md)"
        )


# ------------------------------------------------------------------------------ inputs
def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        Path(path).resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def list_inputs(items: Iterable[str], exclude=None) -> list[tuple[str, object]]:
    """(name, source) per input: image files, the images of folders (sorted), and
    ``simulated`` / ``simulated:SEED`` (source ``("simulated", seed)``).

    ``name`` is the file name with its extension, so ``x.png`` and ``x.jpg`` get separate
    results. Files and folders inside ``exclude`` (the output folder) are left out: a run never
    reads its own overlays. The same file given twice counts once; two different files with
    the same name (from two folders) raise :class:`InputError`."""
    out = []
    excl = Path(exclude).resolve() if exclude is not None else None
    for it in items:
        if it == "simulated" or it.startswith("simulated:"):
            seed = int(it.split(":", 1)[1]) if ":" in it else 0
            out.append((f"simulated_seed{seed}", ("simulated", seed)))
            continue
        p = Path(it)
        if _inside(p, excl):
            continue
        if p.is_dir():
            out += [
                (f.name, f)
                for f in sorted(p.iterdir())
                if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and not _inside(f, excl)
            ]
        else:
            out.append((p.name, p))
    seen: dict[str, object] = {}
    unique = []
    for name, src in out:
        if name in seen:
            if isinstance(src, tuple) or Path(src).resolve() == Path(seen[name]).resolve():
                continue  # the same input twice
            raise InputError(
                f"{seen[name]} and {src} have the same file name and would write the same "
                "results; analyse them into separate --out folders"
            )
        seen[name] = src
        unique.append((name, src))
    return unique


def load_image(src, limit: int | None = None) -> np.ndarray:
    """The image of an input; files above the pixel limit (:func:`max_pixels`) are refused
    with ImageReadError before they are decoded."""
    if isinstance(src, tuple):
        from ..data.simulate import simulate_smear

        return simulate_smear(seed=src[1]).image
    from ..io.images import read_image

    check_pixels(src, limit)
    return np.asarray(read_image(src))


def display_name(name: str, src) -> str:
    """The ``image`` value of the regions CSV (file name) and of the summary (path)."""
    return name if isinstance(src, tuple) else Path(src).name


def summary_image(name: str, src) -> str:
    return name if isinstance(src, tuple) else str(src)


class SmearImages:
    """``torch.utils.data.Dataset`` of smears: item ``i`` -> dict(index, rgb (H,W,3) uint8,
    fg (H,W) bool cell-pixel mask) or dict(index, error) when the file cannot be read."""

    def __init__(self, inputs: list[tuple[str, object]], limit: int | None = None):
        self.inputs = list(inputs)
        self.limit = max_pixels(limit)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> dict:
        from ..io.images import to_rgb_uint8
        from .smear import _oriented, foreground_mask, prepare_image

        _, src = self.inputs[i]
        try:
            img = load_image(src, self.limit)
            rgb = prepare_image(img)
        except (ValueError, OSError) as exc:
            return {"index": i, "error": " ".join(str(exc).split()) or type(exc).__name__}
        if rgb is None:  # too small to hold a cell: an empty result
            return {"index": i, "small": True, "rgb": to_rgb_uint8(_oriented(img))}
        return {"index": i, "rgb": rgb, "fg": foreground_mask(rgb)}


def _worker_init(_):
    import torch

    torch.set_num_threads(1)


# ------------------------------------------------------------------------------ outputs
def _atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then rename onto ``path`` (same folder: atomic; umask permissions)."""
    from .._atomic import atomic_write

    atomic_write(path, write)


def marker_path(out: Path, name: str) -> Path:
    return Path(out) / STATE_DIR / f"{name}.json"


def error_marker_path(out: Path, name: str) -> Path:
    return Path(out) / STATE_DIR / f"{name}.error.json"


def _file_stamp(src) -> list | None:
    try:
        st = Path(src).stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def record_error(out: Path, name: str, src, message: str) -> None:
    """Remember that ``src`` could not be read (with its size and mtime; see :func:`known_error`)."""
    if isinstance(src, tuple):
        return
    _atomic_write(
        error_marker_path(out, name), lambda p: p.write_text(json.dumps({"error": message, "stamp": _file_stamp(src)}))
    )


def known_error(out: Path, name: str, src) -> str | None:
    """The recorded error of an unreadable input if the file has not changed since, else None."""
    m = error_marker_path(out, name)
    if isinstance(src, tuple) or not m.is_file():
        return None
    try:
        rec = json.loads(m.read_text())
    except (OSError, ValueError):
        return None
    stamp = _file_stamp(src)
    return rec.get("error") if stamp is not None and rec.get("stamp") == stamp else None


def is_done(out: Path, name: str) -> bool:
    m = marker_path(out, name)
    if not m.is_file():
        return False
    try:
        row = json.loads(m.read_text())
    except (OSError, ValueError):
        return False
    return (Path(out) / row.get("regions_csv", "")).is_file()


def overlay_png(rgb, result, path):
    """Draw boxes (red abnormal, green normal) on the image and save it as PNG."""
    import imageio.v3 as iio
    from skimage.draw import rectangle_perimeter

    img = rgb.copy()
    h, w = img.shape[:2]
    for (x0, y0, x1, y1), abn in zip(result.boxes, result.abnormal):
        color = (255, 40, 40) if abn else (40, 230, 60)
        for d in range(2):
            rr, cc = rectangle_perimeter(
                (int(y0) + d, int(x0) + d), end=(int(y1) - 1 - d, int(x1) - 1 - d), shape=(h, w), clip=True
            )
            img[rr, cc] = color
    iio.imwrite(path, np.ascontiguousarray(img), extension=".png")


def summary_row(name, src, result, csv_path, png_path) -> dict:
    s = result.summary
    return {
        "image": summary_image(name, src),
        "n_regions": s["n_regions"],
        **{f"n_{t}": c for t, c in s["counts"].items()},
        "n_abnormal": s["n_abnormal"],
        "abnormal_fraction": s["abnormal_fraction"],
        "scd_call": s["scd_call"],
        "regions_csv": Path(csv_path).name,
        "overlay_png": Path(png_path).name if png_path else "",
    }


def write_image_results(out: Path, name: str, src, rgb, result, *, overlay: bool = True) -> dict:
    """Regions CSV, overlay PNG, then the done marker (each atomically); returns the summary row."""
    csv_path = out / f"{name}_regions.csv"
    png_path = out / f"{name}_overlay.png" if overlay else None
    from ..io.formats import validate_regions

    df = validate_regions(result.to_dataframe(display_name(name, src)), source=f"results of {name}")
    _atomic_write(csv_path, lambda p: df.to_csv(p, index=False))
    if overlay:
        _atomic_write(png_path, lambda p: overlay_png(rgb, result, p))
    row = summary_row(name, src, result, csv_path, png_path)
    _atomic_write(marker_path(out, name), lambda p: p.write_text(json.dumps(row)))
    return row


def write_summary(out: Path, inputs, errors: dict[int, str], path: Path | None = None) -> Path:
    """``summary.csv`` in input order from the done markers (+ one row per unreadable image)."""
    import pandas as pd

    rows = []
    for i, (name, src) in enumerate(inputs):
        m = marker_path(out, name)
        err = errors.get(i) or (None if m.is_file() else known_error(out, name, src))
        if err:
            rows.append({"image": summary_image(name, src), "error": err})
        elif m.is_file():
            rows.append(json.loads(m.read_text()))
    path = path or Path(out) / "summary.csv"
    df = pd.DataFrame(rows)
    if "error" in df.columns:  # error rows last column; counts stay integers next to them
        df = df[[c for c in df.columns if c != "error"] + ["error"]]
        for c in df.columns:
            if c.startswith("n_"):
                df[c] = df[c].astype("Int64")
    _atomic_write(path, lambda p: df.to_csv(p, index=False))
    return path


# ------------------------------------------------------------------------------ engine
@dataclass
class BatchReport:
    total: int = 0
    analyzed: int = 0
    skipped_done: int = 0
    unreadable: int = 0
    regions: int = 0
    seconds: float = 0.0
    processes: int = 1
    summary: str = ""
    errors: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "errors"}
        d["images_per_min"] = 60.0 * self.analyzed / self.seconds if self.seconds > 0 else None
        return d


def default_num_workers() -> int:
    """Reader processes: one core is left to the analysis (0 on a single-core machine), at most 4."""
    return max(0, min(4, _cores() - 1))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: resident memory of one analysing process with its models, with a margin over the measured (docs/performance.md)
PROCESS_MEMORY_GB = 1.6
#: extra resident memory per pixel of the largest image being analysed (docs/reliability.md)
PIXEL_MEMORY_BYTES = 90


def process_memory_gb(pixels: int | None = None) -> float:
    """Expected peak memory of one analysing process when its largest image has ``pixels`` pixels."""
    return PROCESS_MEMORY_GB + (int(pixels) * PIXEL_MEMORY_BYTES / 2**30 if pixels else 0.0)


def _available_memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_processes(device="auto", n_groups: int | None = None, pixels: int | None = None) -> int:
    """Analysing processes for ``processes=None``: on CPU one per core (at most 8, as many as
    the free memory holds at :func:`process_memory_gb` each for the largest image of ``pixels``
    pixels, no more than there are groups of images to do); on a GPU one (the GPU is the engine,
    several processes would only queue on it)."""
    from .._device import resolve_device

    if resolve_device(device).type != "cpu":
        return 1
    n = min(8, _cores())
    mem = _available_memory_gb()
    if mem is not None:
        n = min(n, int(mem // process_memory_gb(pixels)))
    if n_groups is not None:
        n = min(n, n_groups)
    return max(1, n)


def pending(
    inputs, out, *, images_per_batch: int = 4, shard: tuple[int, int] = (0, 1), overwrite: bool = False
) -> list[int]:
    """Indices of this shard's inputs that a run would analyse: not done, and not unreadable
    unchanged since the last run (everything of the shard with ``overwrite``)."""
    out = Path(out)
    rank, world = shard
    ipb = max(1, int(images_per_batch))
    mine = [i for i in range(len(inputs)) if (i // ipb) % world == rank]
    if overwrite:
        return mine
    return [i for i in mine if not is_done(out, inputs[i][0]) and known_error(out, *inputs[i]) is None]


def analyze_batch(
    inputs,
    out,
    models,
    *,
    score_threshold: float = 0.5,
    nms_iou: float = 0.5,
    type_threshold: float = 0.5,
    batch_size: int = 64,
    images_per_batch: int = 4,
    num_workers: int | None = None,
    processes: int | None = None,
    threads: int | None = None,
    device="auto",
    overlay: bool = True,
    overwrite: bool = False,
    shard: tuple[int, int] = (0, 1),
    summary: bool = True,
    progress=None,
    on_image_done=None,
    max_pixels: int | None = None,
) -> BatchReport:
    """Analyse ``inputs`` (from :func:`list_inputs`) into ``out``; see the module docstring.

    ``models`` may be a callable returning the models: it is called only if some image is
    left to analyse (a rerun with everything done loads nothing). ``max_pixels``: the pixel
    limit (:func:`max_pixels`).

    ``shard=(rank, world)``: only the groups ``g`` with ``g % world == rank`` (one rank of a
    ``torchrun`` launch, see ``python -m napari_sickle.analyze``); ``summary=False`` leaves
    ``summary.csv`` to the caller (rank 0 writes it once every rank is done).

    ``processes`` analysing processes take turns on this call's groups; ``None`` =
    :func:`default_processes`. With more than one, each is a
    fresh process (``torch.multiprocessing``, spawn) that loads the models from their checkpoint
    files and runs ``threads`` torch threads (default: cores // processes) and ``num_workers``
    reader processes (default 0: the other analysing processes use the other cores). With one,
    the work runs in this process with its torch threads and ``num_workers`` readers (default
    :func:`default_num_workers`).

    ``progress(done, total)`` after every image; ``on_image_done(index, name)`` after an image's
    files are written (used by the benchmark to sample memory); both are called in this process."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / STATE_DIR).mkdir(exist_ok=True)
    inputs = list(inputs)
    limit = _pixel_limit(max_pixels)
    rep = BatchReport(total=len(inputs))
    rank, world = shard
    ipb = max(1, int(images_per_batch))
    mine = [i for i in range(len(inputs)) if (i // ipb) % world == rank]
    if overwrite:
        for i in mine:
            marker_path(out, inputs[i][0]).unlink(missing_ok=True)
            error_marker_path(out, inputs[i][0]).unlink(missing_ok=True)
    # every image is skipped on its own once done; unreadable files unchanged since the last
    # run are reported again from their error marker without being read
    todo = pending(inputs, out, images_per_batch=ipb, shard=shard)
    todo_set = set(todo)
    groups_todo = sorted({i // ipb for i in todo})
    rep.total = len(mine)
    for i in mine:
        if i not in todo_set and not is_done(out, inputs[i][0]):
            rep.errors[i] = known_error(out, *inputs[i]) or "unreadable"
            rep.unreadable += 1
    rep.skipped_done = len(mine) - len(todo) - rep.unreadable
    done_count = len(mine) - len(todo)

    def advance():
        nonlocal done_count
        done_count += 1
        if progress is not None:
            progress(done_count, rep.total)

    def image_done(index, name, n_regions):
        rep.analyzed += 1
        rep.regions += n_regions
        if on_image_done is not None:
            on_image_done(index, name)
        advance()

    def unreadable(index, message):
        rep.unreadable += 1
        rep.errors[index] = message
        record_error(out, *inputs[index], message)
        advance()

    opts = {
        "score_threshold": score_threshold,
        "nms_iou": nms_iou,
        "type_threshold": type_threshold,
        "batch_size": batch_size,
        "images_per_batch": ipb,
        "overlay": overlay,
        "max_pixels": limit,
    }
    # the torch threads of each analysing process follow the processes planned for all of this
    # shard's groups, not just those left: a restarted run computes with the same thread count
    # as an uninterrupted one (results differ in the last float bits between thread counts)
    n_groups = len({i // ipb for i in mine})
    if processes is None and todo:
        sizes = [image_pixels(inputs[i][1]) for i in mine if not isinstance(inputs[i][1], tuple)]
        largest = min(max([n for n in sizes if n] or [0]), limit)
        plan = default_processes(device, n_groups, pixels=largest)
    else:
        plan = 1 if processes is None else int(processes)
    plan = max(1, min(plan, n_groups))
    n_proc = max(1, min(plan, len(groups_todo)))
    if threads is None and plan > 1:
        threads = max(1, _cores() // plan)
    if todo and callable(models):
        models = models()
    paths = (getattr(models, "detector_path", ""), getattr(models, "classifier_path", ""))
    if n_proc > 1 and not all(paths and Path(p).is_file() for p in paths):
        n_proc = 1  # models not loaded from files: cannot be reloaded in other processes
    if n_proc > 1 and todo:
        turn = {g: j % n_proc for j, g in enumerate(groups_todo)}  # the processes take turns on the groups
        parts = [[i for i in todo if turn[i // ipb] == k] for k in range(n_proc)]
        _run_processes(parts, inputs, out, paths, device, threads, num_workers, opts, image_done, unreadable)
    elif todo:
        import torch

        from .smear import place_models

        place_models(models, device)
        workers = default_num_workers() if num_workers is None else int(num_workers)
        saved_threads = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(int(threads))
        try:
            _analyze_indices(
                inputs, todo, out, models, num_workers=workers, on_done=image_done, on_error=unreadable, **opts
            )
        finally:
            torch.set_num_threads(saved_threads)
    rep.processes = n_proc
    if summary:
        rep.summary = str(write_summary(out, inputs, rep.errors))
    rep.seconds = time.perf_counter() - t0
    return rep


def _analyze_indices(
    inputs,
    todo,
    out,
    models,
    *,
    score_threshold,
    nms_iou,
    type_threshold,
    batch_size,
    images_per_batch,
    overlay,
    num_workers,
    on_done,
    on_error,
    max_pixels=None,
) -> None:
    """Analyse ``inputs[i] for i in todo`` with ``models`` already on their device: read
    through a DataLoader, detect and classify per image (an image's regions are never batched
    with another image's, so its numbers do not depend on which images are analysed with it),
    write each image's files; ``on_done(index, name, n_regions)`` / ``on_error(index, message)``."""
    from torch.utils.data import DataLoader

    from .smear import _empty, detect_regions, finish_result

    clf = models.classifier
    ds = SmearImages([inputs[i] for i in todo], max_pixels)
    loader = DataLoader(
        ds,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers else None,
        prefetch_factor=2 if num_workers else None,
        persistent_workers=False,
    )
    pending: list[dict] = []

    def flush():
        if not pending:
            return
        for p in pending:
            name, src = inputs[p["index"]]
            n = len(p["boxes"])
            if n:
                crops, owner = clf.region_crops(p["rgb"], p["boxes"])
                probs = clf.region_probs(clf.features(crops, batch_size=batch_size), owner, n)
                res = finish_result(
                    p["rgb"].shape, p["boxes"], p["scores"], probs, clf, type_threshold=type_threshold, image_name=name
                )
            else:
                res = _empty(p["rgb"].shape, name, type_threshold)
            write_image_results(out, name, src, p["rgb"], res, overlay=overlay)
            on_done(p["index"], name, n)
        pending.clear()
        _release_memory()

    for item in loader:
        idx = todo[int(item["index"])]
        if "error" in item:
            on_error(idx, item["error"])
            continue
        if item.get("small"):
            pending.append(
                {
                    "index": idx,
                    "rgb": _np(item["rgb"]),
                    "boxes": np.zeros((0, 4), np.float32),
                    "scores": np.zeros(0, np.float32),
                }
            )
        else:
            rgb, fg = _np(item["rgb"]), _np(item["fg"])
            boxes, scores, _ = detect_regions(
                rgb, models.detector, score_threshold=score_threshold, nms_iou=nms_iou, fg=fg
            )
            pending.append({"index": idx, "rgb": rgb, "boxes": boxes, "scores": scores})
        flush()


# ------------------------------------------------------------------------------ several processes
def _run_processes(parts, inputs, out, paths, device, threads, num_workers, opts, on_done, on_error):
    """Analyse ``inputs[i] for i in parts[k]`` in spawned process ``k``
    (``torch.multiprocessing.start_processes``); their per-image reports come back through a
    queue and are passed to ``on_done`` / ``on_error`` here. A failing process stops the others
    and its error is raised here (``torch.multiprocessing.ProcessRaisedException``)."""
    import multiprocessing

    import torch.multiprocessing as tmp

    n_proc = len(parts)
    n_threads = max(1, _cores() // n_proc) if threads is None else int(threads)
    workers = 0 if num_workers is None else int(num_workers)
    queue = multiprocessing.get_context("spawn").SimpleQueue()
    ctx = tmp.start_processes(
        _process_main,
        nprocs=n_proc,
        join=False,
        start_method="spawn",
        args=(parts, inputs, str(out), paths, device, n_threads, workers, opts, queue),
    )

    def drain():
        while not queue.empty():
            kind, index, *rest = queue.get()
            (on_done if kind == "done" else on_error)(index, *rest)

    try:
        while not ctx.join(timeout=0.2):
            drain()
        drain()
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join()


def _process_main(k, parts, inputs, out, paths, device, threads, num_workers, opts, queue):
    """Body of analysing process ``k``: the images ``parts[k]`` (whole groups)."""
    _die_with_parent()
    import torch

    torch.set_num_threads(threads)
    from ..models.registry import load_models
    from .smear import place_models

    models = load_models(*paths, device=device)
    place_models(models, device)
    _analyze_indices(
        inputs,
        parts[k],
        Path(out),
        models,
        num_workers=num_workers,
        on_done=lambda i, name, n: queue.put(("done", i, name, n)),
        on_error=lambda i, msg: queue.put(("error", i, msg)),
        **opts,
    )


def _die_with_parent() -> None:
    """Linux: this process is killed when its parent dies (a killed ``analyze`` leaves no
    orphan writing into the output folder). No-op elsewhere."""
    import signal

    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent is already gone
        os._exit(1)


def _release_memory() -> None:
    """Give freed heap pages back to the OS after each group (glibc ``malloc_trim``): without
    it the resident size crept up by a few MB per image (varying region counts give varying
    tensor sizes, which fragment the heap). No-op where glibc is absent."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def _np(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)
