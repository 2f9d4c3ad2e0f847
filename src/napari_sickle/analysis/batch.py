"""Streaming batch analysis of many smears (the engine of ``python -m napari_sickle.analyze``).

* Images are read by a ``torch.utils.data.DataLoader`` over :class:`SmearImages`
  (``num_workers`` reader processes): decoding, the RGB conversion and the cell-pixel mask
  happen there, so reading the next images overlaps detection and classification of the
  current ones.
* Regions are detected per image (the same :func:`analysis.smear.detect_regions` as the
  widget) and classified for up to ``images_per_batch`` images at a time: the crops of all of
  them go through the classifier backbone in batches of ``batch_size`` regions.
* Every image's results are written as soon as its batch is classified, each file atomically
  (temporary file + ``os.replace``): ``<stem>_regions.csv``, ``<stem>_overlay.png`` and last the
  marker ``.sickle-batch/<stem>.json`` holding its summary row. An image counts as done when
  its marker exists. The inputs form fixed groups of ``images_per_batch`` consecutive images,
  classified together; a restarted run skips every group whose images are all done and redoes
  the others whole, so it batches exactly as an uninterrupted run does (byte-identical files)
  and a crash loses at most the group in flight (``images_per_batch=1``: the current image).
* ``summary.csv`` is rebuilt from the markers, in input order, at the end of each run (also of a
  restarted one); unreadable images are counted, listed there with their error, and skipped.
* Memory does not grow with the number of images: only the images in flight are held, plus a
  small summary row per image.
* On a CPU the groups are shared among several analysing processes (by default one per core,
  :func:`default_processes`), each with its own models and one torch thread: on a 2-core machine
  two single-threaded processes analyse more images per minute than one process using both
  cores for each image (intra-op threading of the detector scales poorly). A group's result does
  not depend on which process did it, so restarts stay byte-identical for the same settings.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ..constants import IMAGE_EXTENSIONS

IMAGE_SUFFIXES = frozenset(IMAGE_EXTENSIONS)
STATE_DIR = ".sickle-batch"


# ------------------------------------------------------------------------------ inputs
def list_inputs(items: Iterable[str]) -> list[tuple[str, object]]:
    """(name, source) per input: image files, the images of folders (sorted), and
    ``simulated`` / ``simulated:SEED`` (source ``("simulated", seed)``)."""
    out = []
    for it in items:
        if it == "simulated" or it.startswith("simulated:"):
            seed = int(it.split(":", 1)[1]) if ":" in it else 0
            out.append((f"simulated_seed{seed}", ("simulated", seed)))
            continue
        p = Path(it)
        if p.is_dir():
            out += [(f.stem, f) for f in sorted(p.iterdir())
                    if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")]
        else:
            out.append((p.stem, p))
    return out


def load_image(src) -> np.ndarray:
    if isinstance(src, tuple):
        from ..data.simulate import simulate_smear

        return simulate_smear(seed=src[1]).image
    from ..io.images import read_image

    return np.asarray(read_image(src))


def display_name(name: str, src) -> str:
    """The ``image`` value of the regions CSV (file name) and of the summary (path)."""
    return name if isinstance(src, tuple) else Path(src).name


def summary_image(name: str, src) -> str:
    return name if isinstance(src, tuple) else str(src)


class SmearImages:
    """``torch.utils.data.Dataset`` of smears: item ``i`` -> dict(index, rgb (H,W,3) uint8,
    fg (H,W) bool cell-pixel mask) or dict(index, error) when the file cannot be read."""

    def __init__(self, inputs: list[tuple[str, object]]):
        self.inputs = list(inputs)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> dict:
        from ..io.images import to_rgb_uint8
        from .smear import _oriented, foreground_mask, prepare_image

        _, src = self.inputs[i]
        try:
            img = load_image(src)
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
    """``write(tmp_path)`` then ``os.replace`` onto ``path`` (same folder: atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def marker_path(out: Path, name: str) -> Path:
    return Path(out) / STATE_DIR / f"{name}.json"


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
            rr, cc = rectangle_perimeter((int(y0) + d, int(x0) + d), end=(int(y1) - 1 - d, int(x1) - 1 - d),
                                         shape=(h, w), clip=True)
            img[rr, cc] = color
    iio.imwrite(path, np.ascontiguousarray(img), extension=".png")


def summary_row(name, src, result, csv_path, png_path) -> dict:
    s = result.summary
    return {"image": summary_image(name, src), "n_regions": s["n_regions"],
            **{f"n_{t}": c for t, c in s["counts"].items()}, "n_abnormal": s["n_abnormal"],
            "abnormal_fraction": s["abnormal_fraction"], "scd_call": s["scd_call"],
            "regions_csv": Path(csv_path).name, "overlay_png": Path(png_path).name if png_path else ""}


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
        if i in errors:
            rows.append({"image": summary_image(name, src), "error": errors[i]})
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


def _available_memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_processes(device="auto", n_groups: int | None = None) -> int:
    """Analysing processes for ``processes=None``: on CPU one per core (at most 8, as many as
    the free memory holds at :data:`PROCESS_MEMORY_GB` each, no more than there are groups of
    images to do); on a GPU one (the GPU is the engine, several processes would only queue on it)."""
    from .._device import resolve_device

    if resolve_device(device).type != "cpu":
        return 1
    n = min(8, _cores())
    mem = _available_memory_gb()
    if mem is not None:
        n = min(n, int(mem // PROCESS_MEMORY_GB))
    if n_groups is not None:
        n = min(n, n_groups)
    return max(1, n)


def analyze_batch(inputs, out, models, *, score_threshold: float = 0.5, nms_iou: float = 0.5,
                  type_threshold: float = 0.5, batch_size: int = 64, images_per_batch: int = 4,
                  num_workers: int | None = None, processes: int | None = None, threads: int | None = None,
                  device="auto", overlay: bool = True, overwrite: bool = False, shard: tuple[int, int] = (0, 1),
                  summary: bool = True, progress=None, on_image_done=None) -> BatchReport:
    """Analyse ``inputs`` (from :func:`list_inputs`) into ``out``; see the module docstring.

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
    rep = BatchReport(total=len(inputs))
    rank, world = shard
    ipb = max(1, int(images_per_batch))
    if overwrite:
        for i, (name, _) in enumerate(inputs):
            if (i // ipb) % world == rank:
                marker_path(out, name).unlink(missing_ok=True)
    # fixed groups of images_per_batch consecutive inputs are classified together; a group is
    # redone whole unless all its images are done, so a restarted run batches exactly like an
    # uninterrupted one and writes byte-identical files
    done_flags = [is_done(out, name) for name, _ in inputs]
    mine = [i for i in range(len(inputs)) if (i // ipb) % world == rank]
    groups_todo = sorted({i // ipb for i in mine if not done_flags[i]})
    todo_set = set(groups_todo)
    todo = [i for i in mine if i // ipb in todo_set]
    rep.total = len(mine)
    rep.skipped_done = len(mine) - len(todo)
    done_count = rep.skipped_done

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
        advance()

    opts = {"score_threshold": score_threshold, "nms_iou": nms_iou, "type_threshold": type_threshold,
            "batch_size": batch_size, "images_per_batch": ipb, "overlay": overlay}
    n_proc = default_processes(device, len(groups_todo)) if processes is None else int(processes)
    n_proc = max(1, min(n_proc, len(groups_todo)))
    paths = (getattr(models, "detector_path", ""), getattr(models, "classifier_path", ""))
    if n_proc > 1 and not all(paths and Path(p).is_file() for p in paths):
        n_proc = 1  # models not loaded from files: cannot be reloaded in other processes
    if n_proc > 1 and todo:
        turn = {g: j % n_proc for j, g in enumerate(groups_todo)}  # the processes take turns on the groups
        parts = [[i for i in todo if turn[i // ipb] == k] for k in range(n_proc)]
        _run_processes(parts, inputs, out, paths, device, threads, num_workers, opts, image_done, unreadable)
    elif todo:
        from .smear import place_models

        place_models(models, device)
        workers = default_num_workers() if num_workers is None else int(num_workers)
        _analyze_indices(inputs, todo, out, models, num_workers=workers, on_done=image_done,
                         on_error=unreadable, **opts)
    rep.processes = n_proc
    if summary:
        rep.summary = str(write_summary(out, inputs, rep.errors))
    rep.seconds = time.perf_counter() - t0
    return rep


def _analyze_indices(inputs, todo, out, models, *, score_threshold, nms_iou, type_threshold, batch_size,
                     images_per_batch, overlay, num_workers, on_done, on_error) -> None:
    """Analyse ``inputs[i] for i in todo`` (whole groups of ``images_per_batch``) with ``models``
    already on their device: read through a DataLoader, detect per image, classify per group,
    write each image's files; ``on_done(index, name, n_regions)`` / ``on_error(index, message)``."""
    import torch
    from torch.utils.data import DataLoader

    from .smear import _empty, detect_regions, finish_result

    clf = models.classifier
    ipb = images_per_batch
    ds = SmearImages([inputs[i] for i in todo])
    loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=num_workers,
                        worker_init_fn=_worker_init if num_workers else None,
                        prefetch_factor=2 if num_workers else None, persistent_workers=False)
    pending: list[dict] = []

    def flush():
        if not pending:
            return
        with_boxes = [p for p in pending if len(p["boxes"])]
        probs_all = np.zeros((0, len(clf.types)), np.float32)
        if with_boxes:
            parts = [clf.region_crops(p["rgb"], p["boxes"]) for p in with_boxes]
            offsets = np.cumsum([0] + [len(p["boxes"]) for p in with_boxes])
            crops = torch.cat([c for c, _ in parts])
            owner = np.concatenate([o + off for (_, o), off in zip(parts, offsets)])
            probs_all = clf.region_probs(clf.features(crops, batch_size=batch_size), owner, int(offsets[-1]))
        k = 0
        for p in pending:
            name, src = inputs[p["index"]]
            n = len(p["boxes"])
            if n:
                res = finish_result(p["rgb"].shape, p["boxes"], p["scores"], probs_all[k:k + n], clf,
                                    type_threshold=type_threshold, image_name=name)
                k += n
            else:
                res = _empty(p["rgb"].shape, name, type_threshold)
            write_image_results(out, name, src, p["rgb"], res, overlay=overlay)
            on_done(p["index"], name, n)
        pending.clear()
        _release_memory()

    for item in loader:
        idx = todo[int(item["index"])]
        if pending and pending[0]["index"] // ipb != idx // ipb:
            flush()
        if "error" in item:
            on_error(idx, item["error"])
            continue
        if item.get("small"):
            pending.append({"index": idx, "rgb": _np(item["rgb"]), "boxes": np.zeros((0, 4), np.float32),
                            "scores": np.zeros(0, np.float32)})
        else:
            rgb, fg = _np(item["rgb"]), _np(item["fg"])
            boxes, scores, _ = detect_regions(rgb, models.detector, score_threshold=score_threshold,
                                              nms_iou=nms_iou, fg=fg)
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
    ctx = tmp.start_processes(_process_main, nprocs=n_proc, join=False, start_method="spawn",
                              args=(parts, inputs, str(out), paths, device, n_threads, workers, opts, queue))

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

    models = load_models(*paths, device=device, allow_train=False)
    place_models(models, device)
    _analyze_indices(inputs, parts[k], Path(out), models, num_workers=num_workers,
                     on_done=lambda i, name, n: queue.put(("done", i, name, n)),
                     on_error=lambda i, msg: queue.put(("error", i, msg)), **opts)


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
