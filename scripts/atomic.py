"""Atomic file writes: write to a temporary file in the target's folder, flush it to the disk, then rename it onto
the target, so readers (and a run killed mid-write) see either the old file or the complete new one, never a
truncated file, and the old file survives until the new one is complete. A full disk ends in one line naming the
file and the folder. Standard library only: plan_file (imported by the configs) uses it too."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from scripts.errors import BundleInputError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path next to ``target``; when the block succeeds, fsync it, make it world-readable (mkstemp
    creates 0600) and rename it onto ``target``; when it fails, remove it and leave ``target`` as it was. ``suffix``
    keeps writers that pick the format from the extension (e.g. ``.nii.gz``) working."""
    target = os.fspath(target)
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=suffix)
    os.close(fd)
    try:
        try:
            yield tmp
            _fsync(tmp)
        except OSError as err:
            if err.errno in DISK_FULL:
                raise disk_full(target, folder) from None
            raise
        except RuntimeError as err:  # torch.save reports a failed write as RuntimeError ("iostream error" ...)
            if _looks_full(folder, str(err)):
                raise disk_full(target, folder) from None
            raise
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        _fsync_dir(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(target: str | os.PathLike, text: str) -> None:
    """``text`` (UTF-8) in ``target`` through ``atomic_path``: the old file or the whole new one, never a part."""
    with atomic_path(target, suffix=os.path.splitext(os.fspath(target))[1]) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)


@contextmanager
def atomic_files(folder: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary folder inside ``folder`` for a writer that names its own files (MONAI's MetricsSaver);
    when the block succeeds, fsync each file written there and rename it onto the same name in ``folder``, so every
    previous file survives until all the new ones are complete; when it fails, drop the temporary folder and leave
    ``folder`` as it was."""
    folder = os.path.abspath(os.fspath(folder))
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=folder, prefix=".tmp_")
    try:
        try:
            yield tmp
            written = [
                os.path.relpath(os.path.join(root, name), tmp) for root, _, names in os.walk(tmp) for name in names
            ]
            for name in written:
                _fsync(os.path.join(tmp, name))
        except OSError as err:
            if err.errno in DISK_FULL:
                raise disk_full(folder, folder) from None
            raise
        for name in sorted(written):
            target = os.path.join(folder, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.chmod(os.path.join(tmp, name), 0o644)
            os.replace(os.path.join(tmp, name), target)
        _fsync_dir(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def disk_full(target: str, folder: str) -> BundleInputError:
    """The one line for a write that ran out of space; the previous version of ``target`` is untouched."""
    try:
        free = f", {shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
    except OSError:
        free = ""
    return BundleInputError(
        f"{target}: cannot write, no space left on the disk holding {folder}{free}; "
        "the previous version of the file is kept"
    )


def _looks_full(folder: str, message: str) -> bool:
    """torch's C++ writer loses errno; call it a full disk when the message is about writing and < 64 MiB are free."""
    if "writ" not in message.lower() and "iostream" not in message.lower():
        return False
    try:
        return shutil.disk_usage(folder).free < 64 * 2**20
    except OSError:
        return False


def _fsync(path: str) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: str) -> None:
    """Make the rename itself durable (POSIX); not possible on Windows, where os.open on a folder fails."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
