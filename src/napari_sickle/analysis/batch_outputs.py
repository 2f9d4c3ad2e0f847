"""Outputs of the batch analysis (:mod:`napari_sickle.analysis.batch`): per image the
regions CSV, the overlay PNG and last the done marker, each written atomically (temporary file
+ rename, :func:`napari_sickle._atomic.atomic_write`); error markers of unreadable files;
``summary.csv`` rebuilt from the markers; and :class:`ResultWriter`, the background thread
that writes them while the next images are analysed. No Qt/napari imports.
"""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path

import numpy as np

from .batch_inputs import display_name, summary_image

STATE_DIR = ".sickle-batch"


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
        "type_uncertainty": round(s["type_uncertainty"], 4),
        "lightness_matched": bool(s["lightness_matched"]),
        "scd_call": s["scd_call"],
        "scd_reason": s["scd_reason"],
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
    """``summary.csv`` in input order from the done markers (+ one row per unreadable image).
    Markers written by a version before the type-uncertainty SCD rule (no ``scd_reason``) are
    listed as they are, with a warning that ``--overwrite`` redoes them."""
    import warnings

    import pandas as pd

    rows = []
    for i, (name, src) in enumerate(inputs):
        m = marker_path(out, name)
        err = errors.get(i) or (None if m.is_file() else known_error(out, name, src))
        if err:
            rows.append({"image": summary_image(name, src), "error": err})
        elif m.is_file():
            rows.append(json.loads(m.read_text()))
    old = sum(1 for r in rows if "error" not in r and "scd_reason" not in r)
    if old:
        warnings.warn(
            f"{old} image(s) in {out} were analysed by an earlier version (older SCD rule, no type uncertainty); "
            "their rows in summary.csv are as they were: rerun with --overwrite to redo them",
            stacklevel=2,
        )
    path = path or Path(out) / "summary.csv"
    df = pd.DataFrame(rows)
    if "error" in df.columns:  # error rows last column; counts stay integers next to them
        df = df[[c for c in df.columns if c != "error"] + ["error"]]
        for c in df.columns:
            if c.startswith("n_"):
                df[c] = df[c].astype("Int64")
    _atomic_write(path, lambda p: df.to_csv(p, index=False))
    return path


class ResultWriter:
    """Writes each analysed image's files (:func:`write_image_results`) on a background
    thread, so encoding the CSV and the overlay PNG overlaps the analysis of the next images;
    unreadable images pass through it too, so that the callbacks keep one thread and one order.

    The queue holds at most ``max_pending`` images (the producer waits when it is full, so
    memory stays bounded). ``on_done(index, name, n_regions)`` / ``on_error(index, message)``
    run on the writer thread in submission order, each after the image's files are written.
    A failure while writing (e.g. a full disk) stops further writes and is raised, as itself,
    by the next :meth:`put_result` / :meth:`put_error` or by :meth:`close`; an image whose
    files were not all written has no done marker, so a rerun does it again. Use as a context
    manager: leaving the block waits for the queued writes. ``write``: the function that writes
    an image's files (default :func:`write_image_results`)."""

    def __init__(self, out, inputs, *, overlay: bool, on_done, on_error, max_pending: int = 4, write=None):
        self.out, self.inputs, self.overlay = Path(out), inputs, overlay
        self.write = write_image_results if write is None else write
        self.on_done, self.on_error = on_done, on_error
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(max_pending)))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sickle-batch-writer", daemon=True)
        self._thread.start()

    def put_result(self, index: int, rgb, result, n_regions: int) -> None:
        self._put(("done", index, rgb, result, n_regions))

    def put_error(self, index: int, message: str) -> None:
        self._put(("error", index, message))

    def check(self) -> None:
        """Raise the writer's failure, if any."""
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait for the queued writes, stop the thread, raise its failure if any."""
        if self._thread.is_alive():
            self._queue.put(None)  # the thread drains the queue even after a failure
            self._thread.join()
        self.check()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:  # the analysis failed: let its error through, but do not leave the thread behind
            try:
                self.close()
            except Exception:  # noqa: BLE001 - the analysis' own error is the one to report
                pass
        return False

    def _put(self, item) -> None:
        while True:
            self.check()
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # failed: drop the rest, the producer is told on its next put
            try:
                self._write(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the producer's thread
                self._error = exc

    def _write(self, item) -> None:
        kind, index, *rest = item
        if kind == "error":  # (``on_error`` records it: the error marker)
            self.on_error(index, rest[0])
            return
        name, src = self.inputs[index]
        rgb, result, n = rest
        self.write(self.out, name, src, rgb, result, overlay=self.overlay)
        self.on_done(index, name, n)
