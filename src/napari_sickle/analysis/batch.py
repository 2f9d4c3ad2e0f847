"""Streaming batch analysis of many smears (the engine of ``python -m napari_sickle.analyze``).

* Images are read by a ``torch.utils.data.DataLoader`` over :class:`SmearImages`
  (``num_workers`` reader processes, :func:`default_num_workers`): decoding, the RGB
  conversion and the cell-pixel mask happen there, so reading the next images overlaps
  detection and classification of the current ones.
* Up to ``detect_images`` smears of a group go through the detector in one call
  (:func:`batch_engine.detect_many`; default one on a CPU, the whole group on a GPU), filtered
  and merged into regions as by the widget's :func:`analysis.smear.detect_regions`; each
  smear's regions are then classified (crops in batches of ``batch_size`` regions).
* Every image's results are written as soon as it is classified, by a background writer
  thread (bounded queue; a write failure is raised by the analysis), each file atomically
  (temporary file + rename, :func:`napari_sickle._atomic.atomic_write`):
  ``<name>_regions.csv``, ``<name>_overlay.png`` and last the marker
  ``.sickle-batch/<name>.json`` holding its summary row, where ``<name>`` is the input's file
  name with its extension (``x.png`` and ``x.jpg`` in one folder get separate results). An image
  counts as done when its marker exists; a restarted run skips every done image and does the
  others. The regions of each image are classified on their own (never batched with another
  image's), so an image's numbers do not depend on which images were done before a restart.
  Detection batches only the smears of one group; with several per call (GPU) a restart that
  splits a group may change the detector's scores in the last float bits, as a change of
  thread count does.
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

Modules: inputs and the reader Dataset in :mod:`.batch_inputs`, files and the writer thread
in :mod:`.batch_outputs`, the analysing loop and processes in :mod:`.batch_engine`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .._atomic import remove_stale_temporaries
from .batch_engine import (  # noqa: F401 - _cores and the engine are looked up here (tests patch them)
    _analyze_indices,
    _cores,
    _run_processes,
    default_detect_images,
    detect_many,
)
from .batch_inputs import (  # noqa: F401 - the public names of the batch analysis
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    InputError,
    SmearImages,
    _pixel_limit,
    check_pixels,
    display_name,
    image_pixels,
    list_inputs,
    load_image,
    max_pixels,
    summary_image,
)
from .batch_outputs import (  # noqa: F401
    STATE_DIR,
    ResultWriter,
    error_marker_path,
    is_done,
    known_error,
    marker_path,
    overlay_png,
    record_error,
    summary_row,
    write_image_results,
    write_summary,
)


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
    """Reader processes of one analysing process: none on up to 2 cores (a reader there only
    takes CPU time from the analysis, which is the slower side; docs/performance.md), else
    the cores beyond two, at most 4."""
    cores = _cores()
    return 0 if cores <= 2 else min(4, cores - 2)


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
    detect_images: int | None = None,
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
    max_pixels: int | None = None,  # noqa: F811 - the argument hides the function, see _pixel_limit
) -> BatchReport:
    """Analyse ``inputs`` (from :func:`list_inputs`) into ``out``; see the module docstring.

    ``models`` may be a callable returning the models: it is called only if some image is
    left to analyse (a rerun with everything done loads nothing). ``max_pixels``: the pixel
    limit (:func:`max_pixels`). ``detect_images``: smears per detector call, at most one group
    (None: :func:`batch_engine.default_detect_images`).

    ``shard=(rank, world)``: only the groups ``g`` with ``g % world == rank`` (one rank of a
    ``torchrun`` launch, see ``python -m napari_sickle.analyze``); ``summary=False`` leaves
    ``summary.csv`` to the caller (rank 0 writes it once every rank is done).

    ``processes`` analysing processes (None: :func:`default_processes`) take turns on the
    groups; with more than one, each is a spawned process that loads the models from their
    files, with ``threads`` torch threads (default: cores // processes) and ``num_workers``
    readers (default 0); with one, the work runs here with ``num_workers`` readers (default
    :func:`default_num_workers`).

    ``progress(done, total)`` after every image; ``on_image_done(index, name)`` after an image's
    files are written (used by the benchmark to sample memory); both are called in this
    process (on the writer's thread when the analysis runs in this process)."""
    t0 = time.perf_counter()
    out = Path(out)
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    for folder in (out, out / STATE_DIR):  # leftovers of a killed earlier run
        remove_stale_temporaries(folder)
    inputs = list(inputs)
    limit = _pixel_limit(max_pixels)
    ipb = max(1, int(images_per_batch))
    mine, todo = _start(inputs, out, ipb, shard, overwrite)
    rep = _report_start(inputs, out, mine, todo)
    done, failed = _callbacks(rep, out, inputs, len(mine) - len(todo), progress, on_image_done)
    # the torch threads of each analysing process follow the processes planned for all of this
    # shard's groups, not just those left: a restarted run computes with the same thread count
    # as an uninterrupted one (results differ in the last float bits between thread counts)
    plan = _plan_processes(inputs, mine, todo, ipb, processes, device, limit)
    if threads is None and plan > 1:
        threads = max(1, _cores() // plan)
    if todo and callable(models):
        models = models()
    opts = {
        "score_threshold": score_threshold,
        "nms_iou": nms_iou,
        "type_threshold": type_threshold,
        "batch_size": batch_size,
        "images_per_batch": ipb,
        "detect_images": default_detect_images(device, ipb) if detect_images is None else int(detect_images),
        "overlay": overlay,
        "max_pixels": limit,
    }
    n_proc = _dispatch(inputs, todo, out, models, plan, device, threads, num_workers, opts, done, failed)
    rep.processes = n_proc
    if summary:
        rep.summary = str(write_summary(out, inputs, rep.errors))
    rep.seconds = time.perf_counter() - t0
    return rep


def _dispatch(inputs, todo, out, models, plan: int, device, threads, num_workers, opts, on_done, on_error) -> int:
    """Analyse ``todo`` in ``plan`` spawned processes taking turns on the groups, or here when
    one is planned, one group is left or the models were not loaded from files (they could
    not be reloaded in another process). Returns the number of analysing processes."""
    ipb = opts["images_per_batch"]
    paths = (getattr(models, "detector_path", ""), getattr(models, "classifier_path", ""))
    n_proc = max(1, min(plan, len({i // ipb for i in todo})))
    if n_proc > 1 and not all(paths and Path(p).is_file() for p in paths):
        n_proc = 1
    if n_proc > 1 and todo:
        groups = sorted({i // ipb for i in todo})
        turn = {g: j % n_proc for j, g in enumerate(groups)}  # the processes take turns on the groups
        parts = [[i for i in todo if turn[i // ipb] == k] for k in range(n_proc)]
        _run_processes(parts, inputs, out, paths, device, threads, num_workers, opts, on_done, on_error)
    elif todo:
        _run_here(inputs, todo, out, models, device, threads, num_workers, opts, on_done, on_error)
    return n_proc


def _start(inputs, out: Path, ipb: int, shard, overwrite: bool):
    """This shard's input indices and those left to analyse (``overwrite``: their markers are
    removed first). Every image is skipped on its own once done; unreadable files unchanged
    since the last run are reported again from their error marker without being read."""
    rank, world = shard
    mine = [i for i in range(len(inputs)) if (i // ipb) % world == rank]
    if overwrite:
        for i in mine:
            marker_path(out, inputs[i][0]).unlink(missing_ok=True)
            error_marker_path(out, inputs[i][0]).unlink(missing_ok=True)
    return mine, pending(inputs, out, images_per_batch=ipb, shard=shard)


def _report_start(inputs, out: Path, mine, todo) -> BatchReport:
    """The report before any analysis: done images skipped, unchanged unreadable ones counted."""
    rep = BatchReport(total=len(mine))
    todo_set = set(todo)
    for i in mine:
        if i not in todo_set and not is_done(out, inputs[i][0]):
            rep.errors[i] = known_error(out, *inputs[i]) or "unreadable"
            rep.unreadable += 1
    rep.skipped_done = len(mine) - len(todo) - rep.unreadable
    return rep


def _callbacks(rep: BatchReport, out: Path, inputs, done_before: int, progress, on_image_done):
    """``(on_done(index, name, n_regions), on_error(index, message))`` that update ``rep``
    and report progress."""
    count = [done_before]

    def advance():
        count[0] += 1
        if progress is not None:
            progress(count[0], rep.total)

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

    return image_done, unreadable


def _plan_processes(inputs, mine, todo, ipb: int, processes, device, limit: int) -> int:
    """Analysing processes planned for this shard's groups (see :func:`default_processes`)."""
    n_groups = len({i // ipb for i in mine})
    if processes is None and todo:
        sizes = [image_pixels(inputs[i][1]) for i in mine if not isinstance(inputs[i][1], tuple)]
        largest = min(max([n for n in sizes if n] or [0]), limit)
        plan = default_processes(device, n_groups, pixels=largest)
    else:
        plan = 1 if processes is None else int(processes)
    return max(1, min(plan, n_groups))


def _run_here(inputs, todo, out, models, device, threads, num_workers, opts, on_done, on_error) -> None:
    """The analysis in this process, with ``threads`` torch threads (restored afterwards)."""
    import torch

    from .smear import place_models

    place_models(models, device)
    workers = default_num_workers() if num_workers is None else int(num_workers)
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        _analyze_indices(
            inputs,
            todo,
            out,
            models,
            num_workers=workers,
            on_done=on_done,
            on_error=on_error,
            write=write_image_results,  # looked up here: the one name to replace in tests
            **opts,
        )
    finally:
        torch.set_num_threads(saved_threads)
