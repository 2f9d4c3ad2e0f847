"""The analysing loop of the batch analysis (:mod:`napari_sickle.analysis.batch`): read
through a DataLoader, detect several smears per detector call, classify each smear's regions,
hand the results to the background writer; and the spawned analysing processes that share a
run's groups of images. No Qt/napari imports.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .batch_inputs import SmearImages, _worker_init
from .batch_outputs import ResultWriter


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_detect_images(device, images_per_batch: int) -> int:
    """Smears per detector call: one on a CPU (the convolutions' cost grows with the batch,
    so batching gains nothing there, and each smear's boxes stay those of the widget's path
    bit for bit), the whole group of ``images_per_batch`` on a GPU (fewer, fuller kernel
    launches)."""
    from .._device import resolve_device

    return 1 if resolve_device(device).type == "cpu" else max(1, int(images_per_batch))


class _Detections:
    """Stands in for a detector whose ``detect`` returns one smear's precomputed raw
    detections, so that :func:`analysis.smear.detect_regions` applies its usual filtering and
    region merge to the smears detected together."""

    def __init__(self, detector, raw):
        self.config, self.class_names, self._raw = detector.config, detector.class_names, raw

    def detect(self, rgb, **_):
        return self._raw


def detect_many(rgbs, fgs, detector, *, score_threshold: float = 0.5, nms_iou: float = 0.5):
    """:func:`analysis.smear.detect_regions` of several RGB uint8 smears (``fgs``: their cell
    masks) with one ``RegionDetector.detect_tensors`` call: the tiles of equal size go through
    the network together. Returns ``[(boxes, scores), ...]``. On CUDA the images are copied to
    the device (pinned, non-blocking) before their resize to the detector's scale."""
    import torch

    from .smear import detect_regions

    kw = {"score_threshold": score_threshold, "nms_iou": nms_iou}
    if len(rgbs) == 1:
        return [detect_regions(rgbs[0], detector, fg=fgs[0], **kw)[:2]]
    dev = torch.device(detector.device or "cpu")
    imgs = []
    for rgb in rgbs:
        t = torch.from_numpy(np.ascontiguousarray(rgb))
        if dev.type == "cuda":
            t = t.pin_memory().to(dev, non_blocking=True)
        imgs.append(t.permute(2, 0, 1).float().div_(255.0))
    scales = [detector.image_scale(rgb) for rgb in rgbs]
    raw = detector.detect_tensors(imgs, batch_size=4 * len(imgs), scales=scales, **kw)
    return [detect_regions(rgb, _Detections(detector, r), fg=fg, **kw)[:2] for rgb, fg, r in zip(rgbs, fgs, raw)]


def _loader(inputs, todo, max_pixels, num_workers: int):
    from torch.utils.data import DataLoader

    return DataLoader(
        SmearImages([inputs[i] for i in todo], max_pixels),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers else None,
        prefetch_factor=2 if num_workers else None,
        persistent_workers=False,
    )


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
    detect_images=1,
    write=None,
) -> None:
    """Analyse ``inputs[i] for i in todo`` with ``models`` already on their device: read
    through a DataLoader (``num_workers`` reader processes), detect up to ``detect_images``
    smears of one group (``images_per_batch`` consecutive inputs) per detector call, classify
    each smear's regions on their own (an image's numbers do not depend on which images are
    classified with it), and write each image's files on the background writer;
    ``on_done(index, name, n_regions)`` / ``on_error(index, message)`` run on the writer's
    thread. A writer failure is raised here. ``write``: see :class:`ResultWriter`."""
    ipb, per_call = max(1, int(images_per_batch)), max(1, int(detect_images))
    det_opts = {"score_threshold": score_threshold, "nms_iou": nms_iou}
    writer = ResultWriter(
        out,
        inputs,
        overlay=overlay,
        on_done=on_done,
        on_error=on_error,
        max_pending=2 * per_call,
        write=write,
    )
    with writer:
        waiting: list[tuple[int, dict]] = []
        for item in _loader(inputs, todo, max_pixels, num_workers):
            idx = todo[int(item["index"])]
            if waiting and idx // ipb != waiting[0][0] // ipb:  # smears of one group per detector call
                _analyze_group(waiting, models, det_opts, type_threshold, batch_size, writer)
                waiting = []
            if "error" in item:
                writer.put_error(idx, item["error"])
                continue
            waiting.append((idx, item))
            if len(waiting) >= per_call:
                _analyze_group(waiting, models, det_opts, type_threshold, batch_size, writer)
                waiting = []
        if waiting:
            _analyze_group(waiting, models, det_opts, type_threshold, batch_size, writer)


def _analyze_group(items, models, det_opts, type_threshold, batch_size, writer) -> None:
    """Detect the smears of ``items`` ((index, reader item) pairs) in one detector call,
    classify each smear's regions, queue its results for writing."""
    from .smear import _empty, classify_regions, finish_result

    clf = models.classifier
    rgbs = [_np(it["rgb"]) for _, it in items]
    big = [k for k, (_, it) in enumerate(items) if not it.get("small")]
    found = dict(
        zip(
            big, detect_many([rgbs[k] for k in big], [_np(items[k][1]["fg"]) for k in big], models.detector, **det_opts)
        )
    )
    for k, (idx, _) in enumerate(items):
        name = writer.inputs[idx][0]
        boxes, scores = found.get(k, (np.zeros((0, 4), np.float32), np.zeros(0, np.float32)))
        n = len(boxes)
        if n:
            probs, matched = classify_regions(rgbs[k], boxes, clf, batch_size=batch_size)
            res = finish_result(
                rgbs[k].shape,
                boxes,
                scores,
                probs,
                clf,
                type_threshold=type_threshold,
                image_name=name,
                lightness_matched=matched,
            )
        else:
            res = _empty(rgbs[k].shape, name, type_threshold)
        writer.put_result(idx, rgbs[k], res, n)
    _release_memory()


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
