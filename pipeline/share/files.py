"""Reading and copying bundle files without following links: every component of the path is opened with
O_NOFOLLOW relative to its folder, the file is checked with fstat (a regular file of the size the manifest
says) before a byte is read, and never more than that size is read."""
from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

CHUNK = 1 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)  # a FIFO must not block


class UnsafeFile(Exception):
    """A bundle file that is a link, not a regular file, or not the size the manifest says; str() says which."""


class WrongSize(UnsafeFile):
    """A regular bundle file whose size is not the manifest's (damaged rather than unsafe)."""


class SourceFile(os.PathLike):
    """A file inside a bundle: the bundle's root, the relative path, the size the manifest gives."""

    def __init__(self, root: Path, rel: str, size: int | None = None):
        self.root, self.rel, self.size = Path(root), rel, size

    def __fspath__(self) -> str:
        return os.fspath(self.root / self.rel)

    def __repr__(self) -> str:
        return f"SourceFile({self.root / self.rel})"


def open_regular(src, size: int | None = None) -> int:
    """A read-only descriptor of `src` (a SourceFile, or a path whose last component is not followed);
    raises UnsafeFile when it is a link, not a regular file, or (with `size`) another size."""
    if isinstance(src, SourceFile):
        parts = src.rel.split("/")
        folder = os.open(src.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            for part in parts[:-1]:
                try:
                    inner = os.open(part, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW, dir_fd=folder)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafeFile(f"{part} is a symbolic link or not a folder") from None
                    raise
                os.close(folder)
                folder = inner
            fd = _open_last(parts[-1], folder)
        finally:
            os.close(folder)
        size = src.size if size is None else size
    else:
        fd = _open_last(os.fspath(src), None)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafeFile("is not a regular file")
    if size is not None and st.st_size != size:
        os.close(fd)
        raise WrongSize(f"size {st.st_size} bytes, the manifest says {size} (truncated or altered)")
    return fd


def _open_last(name: str, dir_fd) -> int:
    try:
        return os.open(name, _READ, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeFile("is a symbolic link") from None
        raise


def sha256_file(src, size: int | None = None) -> tuple[int, str]:
    """Size and sha256 of a regular file (see open_regular); reads at most its fstat size."""
    fd = open_regular(src, size)
    h, n = hashlib.sha256(), 0
    with os.fdopen(fd, "rb") as fh:
        limit = os.fstat(fh.fileno()).st_size
        while n < limit and (chunk := fh.read(min(CHUNK, limit - n))):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def copy_file(src, dst) -> tuple[int, str]:
    """Copy `src` (a SourceFile or a path; see open_regular) to a new file `dst` (never overwrites, never
    follows a link), fsync; return size and sha256 of the bytes written. At most the size checked by fstat
    is read, so a file that grows meanwhile is not read on."""
    fd_in = open_regular(src)
    h, n = hashlib.sha256(), 0
    with os.fdopen(fd_in, "rb") as fi:
        limit = os.fstat(fi.fileno()).st_size
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as fo:
            while n < limit and (chunk := fi.read(min(CHUNK, limit - n))):
                h.update(chunk)
                fo.write(chunk)
                n += len(chunk)
            fo.flush()
            os.fsync(fo.fileno())
    return n, h.hexdigest()
