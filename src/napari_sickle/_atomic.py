"""Atomic file writes with ordinary permissions.

:func:`atomic_write` has a callback write a temporary file in the target's folder and then
moves it into place in one step, so a reader (or a later run) sees either no file or the
complete file: a full disk or a crash leaves nothing behind. The temporary file is created
with mode ``0o666`` minus the umask, like any file a program opens for writing (``mkstemp``
would give ``0o600`` and make a shared results folder unreadable to others).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Callable


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname().split(".")[0]) or "host"


#: ``.NAME.HOST-PID-TOKEN.tmpSUFFIX``: the writer's machine and process are in the name, so a
#: later run can tell the leftovers of a killed process from files being written right now
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<host>\w+)-(?P<pid>\d+)-[0-9a-f]{8}\.tmp(\.\w+)?$")


def _temp_path(path: Path) -> Path:
    """A new, empty temporary file next to ``path`` (same suffix, hidden name), umask permissions."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{_host()}-{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))  # pragma: no cover


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's live process
        return True
    return True


def remove_stale_temporaries(folder) -> int:
    """Remove the temporary files that a killed process of this machine left in ``folder``
    (a SIGKILL skips the clean-up of :func:`atomic_write`); files of live processes and of
    other machines stay. Returns how many were removed."""
    n, host = 0, _host()
    for p in Path(folder).glob(".*.tmp*"):
        m = _TEMP_NAME.match(p.name)
        if m and m["host"] == host and not _alive(int(m["pid"])):
            p.unlink(missing_ok=True)
            n += 1
    return n


def _fsync(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    except OSError:  # pragma: no cover - file systems without fsync
        pass


def atomic_write(path, write: Callable[[Path], object], *, overwrite: bool = True) -> Path:
    """``write(tmp)`` writes the content to the temporary path ``tmp`` (same folder and suffix
    as ``path``); it is then moved onto ``path`` in one step.

    ``overwrite=False`` refuses an existing ``path`` (``FileExistsError``), also one created
    by someone else while ``write`` ran: the file is linked into place, which fails instead of
    replacing. Any failure removes the temporary file and re-raises; ``path`` is untouched.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists; napari-sickle never overwrites a file, choose a new name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        write(tmp)
        _fsync(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_into_place(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _link_into_place(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(
            f"{path} already exists; napari-sickle never overwrites a file, choose a new name"
        ) from None
    except OSError:  # no hard links on this file system: check, then rename
        if path.exists():
            raise FileExistsError(
                f"{path} already exists; napari-sickle never overwrites a file, choose a new name"
            ) from None
        os.replace(tmp, path)
        return
    tmp.unlink(missing_ok=True)
