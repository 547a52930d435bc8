"""Helpers of the tests of pipeline.share (this file holds no tests): one small real bundle, built once per
session, as a folder and as a .tar, and ways to craft tar files byte by byte."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from pipeline import share
from tests.pipeline_helpers import build, reset_config, use_config


CONFIG = """
[paths]
workdir = {workdir}

[benchmark.SYN]
device = cpu
stills_per_class = 1
videos_per_class = 1
target_shards = 1
frame_short_side = {short_side}
flow_workers = 1
tvl1_nscales = 1
tvl1_warps = 1
tvl1_outer_iterations = 1
tvl1_inner_iterations = 5
"""
STAGES = "ExtractFlow,DecodeTargetVideos"


def configure(cfg_dir: Path, workdir: Path, short_side: int = 64) -> None:
    use_config(cfg_dir / "luigi.cfg", CONFIG.format(workdir=workdir, short_side=short_side))


def target_tasks():
    return share.select_tasks("SYN", STAGES, ["target"])


def tree_digest(folder: Path) -> str:
    """sha256 over every entry under `folder`: path, type, mode, mtime, a file's bytes, a link's target."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(dirnames + filenames) if dirpath else []:
            p = Path(dirpath) / name
            st = p.lstat()
            h.update(f"{p.relative_to(folder).as_posix()}\0{st.st_mode}\0{st.st_mtime_ns}\0".encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            elif p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


def listing(folder: Path):
    """Everything under `folder` (path, size, mtime), to show a workdir was not touched."""
    if not folder.exists():
        return None
    return sorted((p.relative_to(folder).as_posix(), p.lstat().st_size, p.lstat().st_mtime_ns)
                  for p in folder.rglob("*"))


def fresh_destination(tmp_path: Path) -> Path:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "notes.txt").write_text("someone's workdir")
    configure(tmp_path, dest)
    return dest


def copy_bundle(exported: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported / "bundle", tmp_path / "bundle"))


def load_manifest(bundle: Path) -> dict:
    return json.loads((bundle / share.MANIFEST).read_text())


def save_manifest(bundle: Path, manifest: dict) -> None:
    (bundle / share.MANIFEST).write_text(json.dumps(manifest, indent=2))


def entry_of(manifest: dict, stage: str, suffix: str) -> dict:
    folder = next(f for f in manifest["folders"] if f["stage"] == stage)
    return next(f for f in folder["files"] if f["path"].endswith(suffix))


def rehash(bundle: Path, entry: dict) -> None:
    data = (bundle / entry["path"]).read_bytes()
    entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()


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


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """built_bundles, for a test module (import it with the module's other fixtures)."""
    return built_bundles(tmp_path_factory)


@pytest.fixture(autouse=True)
def reset_after():
    """Every test of a module that imports this fixture ends with the repository's luigi.cfg again."""
    yield
    reset_config()


def rejected(bundle, tmp_path: Path, message: str, code: int | None = None, **import_args) -> share.BundleError:
    """Import `bundle` into a fresh destination: it must fail with `message` (and `code`), the workdir as it was."""
    dest = fresh_destination(tmp_path)
    before = listing(dest)
    with pytest.raises(share.BundleError, match=message) as err:
        share.import_bundle(bundle, **import_args)
    assert listing(dest) == before
    if code is not None:
        assert err.value.code == code
    return err.value


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
