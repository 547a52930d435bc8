"""Helpers of the tests of pipeline.share (this file holds no tests): one small real bundle, built once per
session, as a folder and as a .tar, and ways to craft tar files byte by byte."""
from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

from pipeline import share
from tests.pipeline_helpers import build, reset_config
from tests.test_share import configure, target_tasks

_BUILT: dict[str, Path] = {}


def built_bundles(tmp_path_factory) -> Path:
    """A folder holding work/ (a tiny SYN workdir), bundle/ and bundle.tar of its target stages."""
    if "root" not in _BUILT:
        root = tmp_path_factory.mktemp("share-built")
        configure(root, root / "work")
        try:
            assert build(target_tasks())
            share.export_bundle(target_tasks(), root / "bundle")
            share.export_bundle(target_tasks(), root / "bundle.tar")
        finally:
            reset_config()
        _BUILT["root"] = root
    return _BUILT["root"]


def copy_tree(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def tar_members(path: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]


def write_tar(path: Path, members) -> Path:
    """A tar of (TarInfo, data) pairs, written by tarfile."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info = tarfile.TarInfo(info) if isinstance(info, str) else info
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def _octal(n: int, width: int) -> bytes:
    return (b"%0*o" % (width - 1, n)) + b"\0"


def gnu_sparse_header(name: str, stored: int, realsize: int) -> bytes:
    """A GNU sparse member header: `stored` bytes of data placed at the end of a `realsize`-byte file that is
    otherwise one hole (so extracting it writes `realsize` bytes)."""
    h = bytearray(512)
    h[0:len(name)] = name.encode()
    h[100:108], h[108:116], h[116:124] = _octal(0o644, 8), _octal(0, 8), _octal(0, 8)
    h[124:136], h[136:148] = _octal(stored, 12), _octal(0, 12)
    h[156:157], h[257:265] = b"S", b"ustar  \0"
    h[386:398], h[398:410] = _octal(realsize - stored, 12), _octal(stored, 12)
    h[483:495] = _octal(realsize, 12)
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)
