"""Atomic file replacement, the one recipe every writer of the project uses: write beside the target under a
temporary name, fsync, rename over the target, fsync the folder. A reader sees the old file or the whole new
one. A killed writer leaves only ``.<name>.tmp-<pid>-<hex>``, which
``pipeline.base.remove_stale_temporaries`` recognises by its process id."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable


def temporary_path_for(target: str | os.PathLike, suffix: str = "") -> Path:
    """A unique temporary name beside `target` (same folder, so the final rename is atomic). `suffix` ends
    the name, for writers that choose the format by extension or append one (numpy's ``.npz``)."""
    target = Path(target)
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file, or a folder (which makes a rename in it durable: POSIX keeps the entry there)."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], suffix: str = "") -> None:
    """``write(tmp)`` puts the content at the temporary path; it then replaces `path` durably. On any
    failure the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path_for(path, suffix)
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fsync_path(path.parent)
    except OSError:  # not every file system lets a folder be opened
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text, written atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
