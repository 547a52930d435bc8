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

Checksums (format 2). Every stored byte of an item's payload is covered, and checked whenever it is read:
    - every dataset of fixed-size elements carries HDF5's Fletcher-32 filter (checked by HDF5 on every read);
    - HDF5 refuses filters on variable-length data (its bytes live in the global heap, outside any chunk),
      so every vlen dataset <name> (ids, source_paths, frames, flow) has a companion <name>_crc32 (n,) uint32:
      the CRC-32 of each element's bytes (a changed CRC no longer matches: detected too); so has a scalar;
    - attrs_crc32 (root and every item group): CRC-32 of the other attributes (the root's without `complete`).
StoreReader checks what it reads; check_payload(path) checks a whole file.

Readers open the file lazily in the process that reads (safe with forked DataLoader workers).
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import zlib
from pathlib import Path

import h5py
import numpy as np

from data import codec
from data.atomic import fsync_path, temporary_path_for

FORMAT_VERSION = 2  # 2: per-item checksums (Fletcher-32, CRC-32 of vlen elements and attributes)
CRC_SUFFIX = "_crc32"  # <name>_crc32: CRC-32 of each element of the vlen dataset <name>
ATTRS_CRC = "attrs_crc32"
_ROOT_ATTRS_UNCHECKED = ("complete", ATTRS_CRC)  # complete is written after the digest
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
            # Hold every new dataset until the flush below: HDF5 writes a small dataset's data when the
            # object is closed, and a write that fails there (disk full) is lost in a destructor and leaves
            # HDF5 in a state where the next call crashes; in flush() it raises.
            held = []
            if enc is not None:
                held += _write_vlen(g, "frames", enc) or []
            if enc_flow is not None:
                held += _write_vlen(g, "flow", enc_flow) or []
            for key, value in (arrays or {}).items():
                if key in ("frames", "flow") or key.endswith(CRC_SUFFIX):
                    raise ValueError(f"array name {key!r} is reserved by the store ({self.path})")
                held += _write_array(g, key, np.asarray(value))
            for key, value in (attrs or {}).items():
                if key == ATTRS_CRC:
                    raise ValueError(f"attribute name {key!r} is reserved by the store ({self.path})")
                g.attrs[key] = value
            g.attrs[ATTRS_CRC] = attrs_digest(g.attrs)  # of the values as stored (read back)
            self._file.flush()  # a full disk raises here, for this item, instead of crashing at close
            del held
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
            held = (_write_strings(f, "ids", self._ids)
                    + _write_array(f, "labels", np.array(self._labels, dtype=np.int64))
                    + _write_array(f, "num_frames", np.array(self._num_frames, dtype=np.int64))
                    + _write_strings(f, "source_paths", self._sources))  # until the flush (see add)
            a = f.attrs
            a["stage"], a["benchmark"] = self.stage, self.benchmark
            a["params"] = json.dumps(self.params, sort_keys=True)
            a["format_version"] = FORMAT_VERSION
            a["versions"] = json.dumps(library_versions(), sort_keys=True)
            a["frame_encoding"], a["flow_encoding"] = self.frame_encoding, self.flow_encoding
            for key, value in self.extra_attrs.items():
                a[key] = value
            a["item_count"] = len(self._ids)
            a[ATTRS_CRC] = attrs_digest(a, skip=_ROOT_ATTRS_UNCHECKED)
            f.flush()
            del held
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


# --- checksums -----------------------------------------------------------------------------------------------

def _crc(element) -> int:
    """CRC-32 of one stored element as HDF5 hands it back: bytes, str (as utf-8) or a numpy array/scalar."""
    if isinstance(element, str):
        element = element.encode("utf-8")
    elif not isinstance(element, bytes):
        element = np.ascontiguousarray(element).tobytes()
    return zlib.crc32(element)


def _value_bytes(value) -> bytes:
    """An attribute value as bytes that do not depend on how h5py hands it back (str or bytes, numpy types)."""
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes):
        return b"s" + value
    a = np.asarray(value)
    if a.dtype.kind in "OS":  # arrays of strings
        return b"o" + b"".join(len(v).to_bytes(8, "little") + v for v in map(_value_bytes, a.ravel().tolist()))
    return a.dtype.str.encode() + str(a.shape).encode() + a.tobytes()


def attrs_digest(attrs, skip=(ATTRS_CRC,)) -> int:
    """CRC-32 of an object's attributes (names and values, in name order), those in `skip` left out."""
    crc = 0
    for key in sorted(attrs.keys()):
        if key not in skip:
            for part in (key.encode("utf-8"), _value_bytes(attrs[key])):
                crc = zlib.crc32(part, zlib.crc32(len(part).to_bytes(8, "little"), crc))
    return crc


# The writers return the datasets they create (the caller holds them until it flushes the file).

def _write_vlen(group: h5py.Group, name: str, chunks: list[np.ndarray]) -> list[h5py.Dataset]:
    """Encoded frames or flows, one uint8 array each, and their CRC-32s (HDF5 cannot filter vlen data)."""
    ds = group.create_dataset(name, shape=(len(chunks),), dtype=_VLEN_U8)
    for i, c in enumerate(chunks):
        ds[i] = c
    return [ds] + _write_crcs(group, name, [_crc(c) for c in chunks])


def _write_strings(group: h5py.Group, name: str, values: list[str]) -> list[h5py.Dataset]:
    ds = group.create_dataset(name, data=np.array(values, dtype=object), dtype=_STR)
    return [ds] + _write_crcs(group, name, [_crc(v) for v in values])


_COMPACT_CRCS = 8192  # CRC tables up to this length live in their object header (HDF5 allows 64 KiB there)


def _write_crcs(group: h5py.Group, name: str, crcs: list[int]) -> list[h5py.Dataset]:
    # Without a filter of its own: a changed CRC no longer matches its element, which is detected all the
    # same, and a chunked dataset would cost each item about 2 KiB of chunk index. Compact (the table in the
    # object header, written with the file's metadata) rather than contiguous: HDF5 writes a small contiguous
    # dataset's data when the dataset is closed, where a failed write (disk full) cannot be reported.
    dcpl = None
    if len(crcs) <= _COMPACT_CRCS:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
    return [group.create_dataset(name + CRC_SUFFIX, data=np.array(crcs, np.uint32), dcpl=dcpl)]


_ONE_CHUNK_BYTES = 64 * 2 ** 20  # arrays up to this size are one chunk: read whole, one checksum


def _write_array(group: h5py.Group, name: str, value: np.ndarray) -> list[h5py.Dataset]:
    """A fixed-size array with HDF5's Fletcher-32 filter; a scalar or a vlen (string) array, which HDF5
    cannot filter, with the CRC-32 of its elements beside it instead."""
    if value.dtype.kind == "O":
        return _write_strings(group, name, [str(v) for v in value.ravel()])
    if value.ndim == 0:
        return [group.create_dataset(name, data=value)] + _write_crcs(group, name, [_crc(value)])
    one_chunk = value.size > 0 and value.nbytes <= _ONE_CHUNK_BYTES
    return [group.create_dataset(name, data=value, fletcher32=True, chunks=value.shape if one_chunk else True)]


def _checked_elements(ds: h5py.Dataset, crcs) -> list[int]:
    """Indices of the elements of a vlen or scalar dataset whose CRC-32 differs from `crcs`."""
    values = [ds[()]] if ds.shape == () else ds[()]
    if len(values) != len(crcs):
        return list(range(max(len(values), len(crcs))))
    return [i for i, (v, c) in enumerate(zip(values, crcs)) if _crc(v) != int(c)]


def _dataset_problem(group: h5py.Group, name: str) -> str | None:
    """What is wrong with one dataset and its checksum, or None. Reads the whole dataset."""
    ds = group[name]
    try:
        if ds.dtype.kind == "O" or ds.shape == ():
            if name + CRC_SUFFIX not in group:
                return f"{name} has no {CRC_SUFFIX} checksums"
            crcs = group[name + CRC_SUFFIX][()]
            bad = _checked_elements(ds, crcs)
            if len(ds.shape) == 1 and len(crcs) != ds.shape[0]:
                return f"{name} has {ds.shape[0]} elements but {len(crcs)} checksums"
            if bad:
                shown = ", ".join(map(str, bad[:5])) + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else "")
                return f"{name}[{shown}] fail{'s' if len(bad) == 1 else ''} the CRC-32 checksum"
        else:
            if not ds.fletcher32:
                return f"{name} has no Fletcher-32 checksum"
            ds[()]  # HDF5 checks the Fletcher-32 of every chunk it reads
    except (OSError, ValueError, TypeError) as e:  # a failed checksum, or metadata too damaged to read
        return f"{name} fails its checksum or cannot be read ({_short(e)})"
    return None


def _short(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]


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


class DamagedItemError(ValueError):
    """Stored bytes fail their checksum: the file was altered or damaged after it was written. Names the
    file, the stage that wrote it and the item (None: the file's item list or attributes)."""

    def __init__(self, path: str, stage: str, item_id: str | None, what: str):
        self.path, self.stage, self.item_id, self.what = path, stage, item_id, what
        where = "its item list or attributes" if item_id is None else f"item {item_id!r}"
        super().__init__(f"{path}: {where} of this {stage} output is damaged ({what}); delete the file and rerun "
                         f"{stage} (`python -m pipeline.verify WORKDIR` names every damaged file and the command "
                         "that regenerates it)")


class StoreReader:
    """Read items of one complete shard file. Opens the file lazily, once per process. Everything read is
    checked against its checksum (DamagedItemError when it fails)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not is_complete(self.path):
            raise ValueError(f"{self.path}: not a complete store file (missing, unfinished or corrupted); "
                             "rerun the stage that writes it")
        with h5py.File(self.path, "r") as f:
            self.attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
            self.stage = str(self.attrs.get("stage", "?"))
            version = self.attrs.get("format_version")
            if version != FORMAT_VERSION:
                raise ValueError(f"{self.path}: store format version {version} (this code reads version "
                                 f"{FORMAT_VERSION}, which carries checksums); rerun {self.stage} to rewrite it")
            if int(self.attrs.get(ATTRS_CRC, -1)) != attrs_digest(f.attrs, skip=_ROOT_ATTRS_UNCHECKED):
                raise self._damaged(None, "the file's attributes fail their CRC-32 checksum")
            for name in ("ids", "labels", "num_frames", "source_paths"):
                problem = _dataset_problem(f, name)
                if problem:
                    raise self._damaged(None, problem)
            self.ids = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]]
            self.labels = f["labels"][()].astype(np.int64)
            self._num_frames = f["num_frames"][()].astype(np.int64)
            self._sources = [s.decode() if isinstance(s, bytes) else s for s in f["source_paths"][()]]
        self._index = {item_id: k for k, item_id in enumerate(self.ids)}
        self._crcs: dict[tuple[int, str], np.ndarray] = {}  # checksum tables read so far (small, immutable)
        self._file = None
        self._pid = None

    def _damaged(self, item_id: str | None, what: str) -> DamagedItemError:
        return DamagedItemError(self.path, self.stage, item_id, what)

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
        attrs = self._group(item_id).attrs
        if int(attrs.get(ATTRS_CRC, -1)) != attrs_digest(attrs):
            raise self._damaged(item_id, "its attributes fail their CRC-32 checksum")
        return {k: v for k, v in attrs.items() if k != ATTRS_CRC}

    def read_frames(self, item_id: str, indices=None) -> np.ndarray:
        """RGB uint8 (n, H, W, 3) for the given frame indices (all frames when None)."""
        return self._read_encoded(item_id, "frames", indices, codec.decode_frame)

    def read_flow(self, item_id: str, indices=None) -> np.ndarray:
        """float32 (n, H, W, 2) flows for the given indices (all when None)."""
        return self._read_encoded(item_id, "flow", indices, codec.decode_flow)

    def read_array(self, item_id: str, name: str) -> np.ndarray:
        group = self._group(item_id)
        problem = _dataset_problem(group, name)  # the whole array is read anyway
        if problem:
            raise self._damaged(item_id, problem)
        return group[name][()]

    def _read_encoded(self, item_id: str, name: str, indices, decode) -> np.ndarray:
        group = self._group(item_id)
        ds = group[name]
        key = (self._index[item_id], name)
        try:
            crcs = self._crcs.get(key)
            if crcs is None:
                crcs = self._crcs[key] = group[name + CRC_SUFFIX][()]
            if len(crcs) != len(ds):
                raise self._damaged(item_id, f"{name} has {len(ds)} elements but {len(crcs)} checksums")
            if indices is None:
                indices = range(len(ds))
            cache: dict[int, np.ndarray] = {}
            out = []
            for i in indices:
                i = int(i)
                if i not in cache:
                    raw = ds[i]
                    if zlib.crc32(raw) != int(crcs[i]):
                        raise self._damaged(item_id, f"{name}[{i}] fails its CRC-32 checksum")
                    cache[i] = decode(raw)
                out.append(cache[i])
        except (OSError, KeyError) as e:  # a failed Fletcher-32, or metadata too damaged to read
            raise self._damaged(item_id, f"{name} cannot be read ({_short(e)})") from e
        return np.stack(out)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def check_payload(path: str | os.PathLike, isolate: bool = True) -> list[str]:
    """Check a whole store file, every item against its checksums: one line per problem (one per damaged item,
    or one for the file itself: incomplete, unreadable, damaged item list or attributes, an older format without
    checksums). Empty when the file is intact. The lines do not repeat the path. Reads only.

    HDF5 can crash the process (segfault) on some damaged metadata, so by default the check runs in a forked
    child process and such a crash is reported as a problem line (`isolate=False`: in this process)."""
    path = os.fspath(path)
    if isolate and hasattr(os, "fork"):
        return _in_child(check_payload, path, isolate=False)
    if not is_complete(path):
        return ["not a complete store file (missing, truncated, unfinished or damaged)"]
    try:
        with h5py.File(path, "r") as f:
            return _file_problems(f)
    except Exception as e:  # noqa: BLE001 - any failure of a damaged file is a finding, not a crash of the check
        return [f"cannot be read ({_short(e)})"]


def check_hdf5(path: str | os.PathLike, isolate: bool = True) -> list[str]:
    """Check any HDF5 file written with this module's helpers (write_checked; e.g. training's bank snapshots):
    `complete` = 1 where the file has it, every dataset read whole and checked against the checksums it
    carries (Fletcher-32, <name>_crc32, attrs_crc32 of the root). One line per problem; empty when intact."""
    path = os.fspath(path)
    if isolate and hasattr(os, "fork"):
        return _in_child(check_hdf5, path, isolate=False)
    try:
        with h5py.File(path, "r") as f:
            problems = []
            if "complete" in f.attrs and int(f.attrs["complete"]) != 1:
                problems.append("unfinished (its `complete` attribute is not 1)")
            if ATTRS_CRC in f.attrs and int(f.attrs[ATTRS_CRC]) != attrs_digest(f.attrs, skip=_ROOT_ATTRS_UNCHECKED):
                problems.append("the file's attributes fail their CRC-32 checksum")
            for name in sorted(f):
                if isinstance(f[name], h5py.Dataset) and not _is_crc_of(f, name):
                    ds = f[name]
                    checked = ds.fletcher32 or name + CRC_SUFFIX in f
                    problem = _dataset_problem(f, name) if checked else _unchecked_read_problem(ds, name)
                    if problem:
                        problems.append(problem)
            return problems
    except Exception as e:  # noqa: BLE001 - any failure of a damaged file is a finding
        return [f"cannot be read ({_short(e)})"]


def write_checked(group: h5py.Group, name: str, value) -> None:
    """Write an array (numbers, or strings as an object array) with its checksum, as the store does."""
    _write_array(group, name, np.asarray(value))


def seal_attrs(obj: h5py.HLObject) -> None:
    """Store the CRC-32 of an object's attributes (the root's without `complete`); set them all first."""
    obj.attrs[ATTRS_CRC] = attrs_digest(obj.attrs, skip=_ROOT_ATTRS_UNCHECKED)


def _is_crc_of(group: h5py.Group, name: str) -> bool:
    return name.endswith(CRC_SUFFIX) and name[:-len(CRC_SUFFIX)] in group


def _unchecked_read_problem(ds: h5py.Dataset, name: str) -> str | None:
    try:
        ds[()]
    except Exception as e:  # noqa: BLE001
        return f"{name} cannot be read ({_short(e)})"
    return None


def _in_child(fn, *args, **kwargs):
    """fn(*args, **kwargs) in a forked child process; a child killed by a signal is reported as a problem."""
    import multiprocessing
    import signal

    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_send_result, args=(send, fn, args, kwargs), daemon=True)
    child.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:  # the child died before it answered
        result = None
    child.join()
    if result is None:
        code = child.exitcode
        how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit status {code}"
        return [f"checking it crashed the HDF5 library ({how}): the file's HDF5 metadata is damaged"]
    return result


def _send_result(conn, fn, args, kwargs) -> None:
    conn.send(fn(*args, **kwargs))
    conn.close()


def _file_problems(f: h5py.File) -> list[str]:
    version = f.attrs.get("format_version")
    if version != FORMAT_VERSION:
        return [f"store format version {version} carries no checksums (this code writes version {FORMAT_VERSION})"]
    problems = []
    if int(f.attrs.get(ATTRS_CRC, -1)) != attrs_digest(f.attrs, skip=_ROOT_ATTRS_UNCHECKED):
        problems.append("the file's attributes (stage, parameters, encodings) fail their CRC-32 checksum")
    count = int(f.attrs["item_count"])
    for name in ("ids", "labels", "num_frames", "source_paths"):
        problem = _dataset_problem(f, name) if name in f else f"{name} is missing"
        if problem is None and len(f[name]) != count:
            problem = f"{name} has {len(f[name])} entries, item_count is {count}"
        if problem:
            problems.append(f"item list: {problem}")
    try:
        ids = [s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in f["ids"][()]]
        num_frames = f["num_frames"][()]
    except Exception:  # noqa: BLE001 - already reported above
        ids, num_frames = [], []
    items = f["items"]
    for k in range(count):
        name = f"{k:07d}"
        label = f"item {ids[k]!r} (number {k})" if k < len(ids) else f"item number {k}"
        if name not in items:
            problems.append(f"{label}: its group items/{name} is missing")
            continue
        found = _item_problems(items[name], int(num_frames[k]) if k < len(num_frames) else None)
        if found:
            problems.append(f"{label}: " + "; ".join(found))
    extra = sorted(set(items) - {f"{k:07d}" for k in range(count)})
    if extra:
        problems.append(f"items/ holds {len(extra)} group(s) beyond item_count {count}, e.g. items/{extra[0]}")
    return problems


def _item_problems(group: h5py.Group, num_frames: int | None) -> list[str]:
    found = []
    try:
        if int(group.attrs.get(ATTRS_CRC, -1)) != attrs_digest(group.attrs):
            found.append("its attributes fail their CRC-32 checksum")
        for name in sorted(group):
            if _is_crc_of(group, name):
                continue  # checked with its dataset
            problem = _dataset_problem(group, name)
            if problem:
                found.append(problem)
        if num_frames is not None and "frames" in group and len(group["frames"]) != num_frames:
            found.append(f"{len(group['frames'])} frames stored, num_frames says {num_frames}")
    except Exception as e:  # noqa: BLE001 - metadata too damaged to walk
        found.append(f"cannot be read ({_short(e)})")
    return found


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
