"""The HDF5 store: one file per stage and shard, written atomically, read fast.

File layout
    attrs   stage, benchmark, params (JSON), format_version, versions (JSON), frame_encoding,
            flow_encoding, item_count, complete (written last: 1 means the file is finished)
    ids           (N,) utf-8   stable item ids (dataset-relative paths), in write order
    labels        (N,) int64   class label or -1
    num_frames    (N,) int64   frames per item (0 for items without frames)
    source_paths  (N,) utf-8
    items/<k>/frames   (T,)   vlen uint8: one encoded RGB frame each (data.codec)
    items/<k>/flow     (T-1,) vlen uint8: one encoded flow each; flow t maps frame t to frame t+1
    items/<k>/<name>   any other array (e.g. inverse_depth), attributes on the item group

Readers open the file lazily in the process that reads (safe with forked DataLoader workers).
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np

from data import codec
from data.atomic import fsync_path, temporary_path_for

FORMAT_VERSION = 1
_VLEN_U8 = h5py.vlen_dtype(np.uint8)
_STR = h5py.string_dtype("utf-8")


def library_versions() -> dict:
    """Versions of the libraries that change the bytes we write."""
    import cv2

    versions = {"opencv": cv2.__version__, "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
                "numpy": np.__version__}
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:  # pragma: no cover - torch is a hard dependency, but the store does not need it
        pass
    return versions


class StoreWriteError(OSError):
    """Writing a shard failed in the file system (disk full, quota, I/O error). Nothing was kept: the
    temporary file is removed and every earlier file, the target included, is untouched."""


def _write_error(path: Path, error: BaseException) -> StoreWriteError:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2 ** 20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    found = re.search(r"errno = (\d+)", str(error))  # HDF5 names the system's errno only in its message
    code = getattr(error, "errno", None) or (int(found.group(1)) if found else errno.EIO)
    return StoreWriteError(code, f"could not write {path} ({type(error).__name__}: {error}); {path.parent} has "
                                 f"{free}. Nothing was kept (the temporary file is removed, earlier outputs are "
                                 "untouched): free disk space or fix the file system and rerun")


class ShardWriter:
    """Write one shard file atomically: temp file beside the target, fsync, rename, `complete` last.

    Use as a context manager. If the block raises, the temp file is removed and the target is untouched.
    A failure of the file system (disk full) raises StoreWriteError at the item where it happens: the file
    is flushed after every item, because HDF5 otherwise reports such failures only from destructors (as
    ignored exceptions) and h5py may crash when the file is closed.
    """

    def __init__(self, path, stage: str, benchmark: str, params: dict, extra_attrs: dict | None = None,
                 frame_encoding: str = codec.DEFAULT_FRAME_ENCODING,
                 flow_encoding: str = codec.DEFAULT_FLOW_ENCODING):
        self.path = Path(path)
        self.stage, self.benchmark, self.params = stage, benchmark, params
        self.extra_attrs = dict(extra_attrs or {})
        self.frame_encoding, self.flow_encoding = frame_encoding, flow_encoding
        self._ids: list[str] = []
        self._labels: list[int] = []
        self._num_frames: list[int] = []
        self._sources: list[str] = []
        self._seen: set[str] = set()
        self._file: h5py.File | None = None
        self._tmp: Path | None = None

    def __enter__(self) -> "ShardWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temporary_path_for(self.path)
        self._file = h5py.File(self._tmp, "w", libver=("earliest", "v110"))
        self._file.create_group("items")
        return self

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item_id: str, label: int = -1, source_path: str = "", frames=None, flow=None,
            arrays: dict | None = None, attrs: dict | None = None) -> None:
        """Add one item. `frames` uint8 (T,H,W,3); `flow` float32 (T-1,H,W,2); `arrays` stored as they are."""
        if item_id in self._seen:
            raise ValueError(f"duplicate item id {item_id!r} in {self.path}")
        # Encode first: bad item data fails here, before anything is written.
        enc = None if frames is None else [np.frombuffer(codec.encode_frame(f, self.frame_encoding), np.uint8)
                                           for f in frames]
        enc_flow = None if flow is None else [np.frombuffer(codec.encode_flow(f, self.flow_encoding), np.uint8)
                                              for f in flow]
        name = f"{len(self._ids):07d}"
        try:
            g = self._file["items"].create_group(name)
            if enc is not None:
                _write_vlen(g, "frames", enc)
            if enc_flow is not None:
                _write_vlen(g, "flow", enc_flow)
            for key, value in (arrays or {}).items():
                g.create_dataset(key, data=np.asarray(value))
            for key, value in (attrs or {}).items():
                g.attrs[key] = value
            self._file.flush()  # a full disk raises here, for this item, instead of crashing at close
        except (OSError, RuntimeError) as e:
            raise _write_error(self.path, e) from e
        except BaseException:
            # Bad item data (e.g. an attribute type HDF5 cannot store): drop the half-written group so the
            # next item can take its name, and let the caller skip this item.
            try:
                if name in self._file["items"]:
                    del self._file["items"][name]
            except Exception as cleanup_error:  # the file itself is broken: the shard cannot go on
                raise _write_error(self.path, cleanup_error) from cleanup_error
            raise
        n_frames = 0 if enc is None else len(enc)
        self._ids.append(item_id)
        self._seen.add(item_id)
        self._labels.append(int(label))
        self._num_frames.append(n_frames)
        self._sources.append(str(source_path))

    def __exit__(self, exc_type, exc, tb) -> None:
        f, tmp = self._file, self._tmp
        if exc_type is not None:
            try:
                f.close()
            except Exception:  # the file system failed (disk full): closing may fail too
                pass
            finally:
                tmp.unlink(missing_ok=True)
            return
        try:
            f.create_dataset("ids", data=np.array(self._ids, dtype=object), dtype=_STR)
            f.create_dataset("labels", data=np.array(self._labels, dtype=np.int64))
            f.create_dataset("num_frames", data=np.array(self._num_frames, dtype=np.int64))
            f.create_dataset("source_paths", data=np.array(self._sources, dtype=object), dtype=_STR)
            a = f.attrs
            a["stage"], a["benchmark"] = self.stage, self.benchmark
            a["params"] = json.dumps(self.params, sort_keys=True)
            a["format_version"] = FORMAT_VERSION
            a["versions"] = json.dumps(library_versions(), sort_keys=True)
            a["frame_encoding"], a["flow_encoding"] = self.frame_encoding, self.flow_encoding
            for key, value in self.extra_attrs.items():
                a[key] = value
            a["item_count"] = len(self._ids)
            f.flush()
            a["complete"] = 1  # last: a file without it is never taken as finished
            f.close()
            fsync_path(tmp)
            os.replace(tmp, self.path)
            fsync_path(self.path.parent)
        except BaseException as e:
            try:
                if f.id.valid:
                    f.close()
            except Exception:
                pass
            finally:
                tmp.unlink(missing_ok=True)
            if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, StoreWriteError):
                raise _write_error(self.path, e) from e
            raise


def _write_vlen(group: h5py.Group, name: str, chunks: list[np.ndarray]) -> None:
    ds = group.create_dataset(name, shape=(len(chunks),), dtype=_VLEN_U8)
    for i, c in enumerate(chunks):
        ds[i] = c


def is_complete(path: str | os.PathLike) -> bool:
    """True only for a readable file whose `complete` attribute is 1 and whose item count matches."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    try:
        with h5py.File(path, "r") as f:
            return int(f.attrs.get("complete", 0)) == 1 and len(f["ids"]) == int(f.attrs["item_count"])
    except (OSError, KeyError, ValueError):
        return False  # truncated or corrupted: regenerate


class StoreReader:
    """Read items of one complete shard file. Opens the file lazily, once per process."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not is_complete(self.path):
            raise ValueError(f"{self.path}: not a complete store file (missing, unfinished or corrupted); "
                             "rerun the stage that writes it")
        with h5py.File(self.path, "r") as f:
            self.ids = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]]
            self.labels = f["labels"][()].astype(np.int64)
            self._num_frames = f["num_frames"][()].astype(np.int64)
            self._sources = [s.decode() if isinstance(s, bytes) else s for s in f["source_paths"][()]]
            self.attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        self._index = {item_id: k for k, item_id in enumerate(self.ids)}
        self._file = None
        self._pid = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None
        return state

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._index

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def params(self) -> dict:
        return json.loads(self.attrs["params"])

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def _group(self, item_id: str) -> h5py.Group:
        try:
            k = self._index[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} is not in {self.path}") from None
        return self._h5()["items"][f"{k:07d}"]

    def label(self, item_id: str) -> int:
        return int(self.labels[self._index[item_id]])

    def num_frames(self, item_id: str) -> int:
        return int(self._num_frames[self._index[item_id]])

    def source_path(self, item_id: str) -> str:
        return self._sources[self._index[item_id]]

    def num_flows(self, item_id: str) -> int:
        g = self._group(item_id)
        return len(g["flow"]) if "flow" in g else 0

    def item_attrs(self, item_id: str) -> dict:
        return dict(self._group(item_id).attrs)

    def read_frames(self, item_id: str, indices=None) -> np.ndarray:
        """RGB uint8 (n, H, W, 3) for the given frame indices (all frames when None)."""
        return _read_encoded(self._group(item_id)["frames"], indices, codec.decode_frame)

    def read_flow(self, item_id: str, indices=None) -> np.ndarray:
        """float32 (n, H, W, 2) flows for the given indices (all when None)."""
        return _read_encoded(self._group(item_id)["flow"], indices, codec.decode_flow)

    def read_array(self, item_id: str, name: str) -> np.ndarray:
        return self._group(item_id)[name][()]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _read_encoded(ds: h5py.Dataset, indices, decode) -> np.ndarray:
    if indices is None:
        indices = range(len(ds))
    cache: dict[int, np.ndarray] = {}
    out = []
    for i in indices:
        i = int(i)
        if i not in cache:
            cache[i] = decode(ds[i])
        out.append(cache[i])
    return np.stack(out)


class StoreCollection:
    """Many shard files read as one store (ids must be unique across them)."""

    def __init__(self, paths):
        self.readers = [StoreReader(p) for p in paths]
        self._owner: dict[str, StoreReader] = {}
        for r in self.readers:
            for item_id in r.ids:
                if item_id in self._owner:
                    raise ValueError(f"item {item_id!r} is in both {self._owner[item_id].path} and {r.path}")
                self._owner[item_id] = r
        self.ids = [i for r in self.readers for i in r.ids]
        self.labels = np.concatenate([r.labels for r in self.readers]) if self.readers else np.zeros(0, np.int64)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._owner

    def __len__(self) -> int:
        return len(self.ids)

    def reader(self, item_id: str) -> StoreReader:
        try:
            return self._owner[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} is in none of the {len(self.readers)} store files") from None

    def label(self, item_id):
        return self.reader(item_id).label(item_id)

    def num_frames(self, item_id):
        return self.reader(item_id).num_frames(item_id)

    def num_flows(self, item_id):
        return self.reader(item_id).num_flows(item_id)

    def source_path(self, item_id):
        return self.reader(item_id).source_path(item_id)

    def read_frames(self, item_id, indices=None):
        return self.reader(item_id).read_frames(item_id, indices)

    def read_flow(self, item_id, indices=None):
        return self.reader(item_id).read_flow(item_id, indices)

    def read_array(self, item_id, name):
        return self.reader(item_id).read_array(item_id, name)

    def item_attrs(self, item_id):
        return self.reader(item_id).item_attrs(item_id)
