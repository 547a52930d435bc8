"""The HDF5 content policy of a bundle: a shard may hold only what `data.store.ShardWriter` writes.

HDF5 can make a file read other files or run other code: external raw storage and virtual datasets read
bytes from any path on the importing machine, soft, external and user-defined links point elsewhere,
object and region references (in datasets, attributes, compound fields or variable-length sequences)
address other objects, and an unknown filter makes the library look for a plugin. The store writes none
of these, so every one is refused, in every dataset and every attribute of every group:

- links: hard links only, each object reached by exactly one (no soft, external, user-defined or extra
  hard links) and no named datatypes;
- datasets: contiguous, chunked or compact layout (never virtual), no external storage, no filter but
  Fletcher-32 checksums (`fletcher32=True`);
- datatypes (datasets and attributes): integers of 1, 2, 4 or 8 bytes, IEEE floats of 2, 4 or 8 bytes,
  strings, and variable-length sequences of uint8 (encoded frames and flows). No references, compound,
  enum, array, opaque, bitfield, time or complex types.
"""
from __future__ import annotations

from pathlib import Path

import h5py
from h5py import h5d, h5l, h5o, h5t, h5z

ALLOWED_FILTERS = {h5z.FILTER_FLETCHER32: "fletcher32"}
ALLOWED_LAYOUTS = {h5d.CONTIGUOUS, h5d.CHUNKED, h5d.COMPACT}
MAX_PROBLEMS = 10  # per file: enough to see what is wrong, bounded for a file made of nothing else

_LINK_KINDS = {h5l.TYPE_SOFT: "SoftLink", h5l.TYPE_EXTERNAL: "ExternalLink"}
_TYPE_CLASSES = {h5t.REFERENCE: "object or region references", h5t.COMPOUND: "a compound type",
                 h5t.ENUM: "an enum type", h5t.ARRAY: "an array type", h5t.OPAQUE: "an opaque type",
                 h5t.BITFIELD: "a bitfield type", h5t.TIME: "a time type"}


def type_problem(tid) -> str | None:
    """Why an HDF5 datatype is outside the policy (None when the store could have written it)."""
    cls = tid.get_class()
    if cls == h5t.INTEGER:
        return None if tid.get_size() in (1, 2, 4, 8) else f"a {tid.get_size()}-byte integer type"
    if cls == h5t.FLOAT:
        return None if tid.get_size() in (2, 4, 8) else f"a {tid.get_size()}-byte float type"
    if cls == h5t.STRING:
        return None
    if cls == h5t.VLEN:
        base = tid.get_super()
        if base.get_class() == h5t.INTEGER and base.get_size() == 1 and base.get_sign() == h5t.SGN_NONE:
            return None
        inner = type_problem(base) or "a type other than uint8"
        return f"variable-length sequences of {inner}"
    return _TYPE_CLASSES.get(cls, f"an HDF5 type of class {cls}")


def policy_problems(path: Path) -> list[str]:
    """Every way the HDF5 file at `path` departs from the policy (empty when it complies). Reads structure
    and metadata only: nothing that the policy refuses is ever followed or read."""
    out: list[str] = []
    failed: list[BaseException] = []  # h5py turns an exception raised inside the callback into a SystemError
    with h5py.File(path, "r") as f:
        _check_attrs(f, "/", out)

        def visit(name: str):
            try:
                return _visit(name)
            except Exception as e:  # a damaged file: stop visiting, re-raise it outside the callback
                failed.append(e)
                return "stop"

        def _visit(name: str):
            where = f"/{name}"
            kind = f.id.links.get_info(name.encode()).type
            if kind != h5l.TYPE_HARD:
                out.append(f"HDF5 {_LINK_KINDS.get(kind, 'UserDefinedLink')} at {where} is not allowed")
            else:
                obj = f.get(name)  # a hard link: opening it reads nothing outside the file
                info = h5o.get_info(obj.id)
                if info.rc != 1:
                    out.append(f"HDF5 object {where} is reached by {info.rc} hard links (only one is allowed)")
                if isinstance(obj, h5py.Dataset):
                    _check_dataset(obj, where, out)
                elif isinstance(obj, h5py.Datatype):
                    out.append(f"HDF5 named datatype at {where} is not allowed")
                if not isinstance(obj, h5py.Datatype):
                    _check_attrs(obj, where, out)
            return "stop" if len(out) >= MAX_PROBLEMS else None

        f.visit_links(visit)
        if failed:
            raise failed[0]
    return out[:MAX_PROBLEMS]


def _check_dataset(ds: h5py.Dataset, where: str, out: list[str]) -> None:
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5d.VIRTUAL:
        out.append(f"HDF5 dataset {where} is a virtual dataset (it reads other files), which is not allowed")
    elif layout not in ALLOWED_LAYOUTS:
        out.append(f"HDF5 dataset {where} has an unknown storage layout ({layout})")
    if dcpl.get_external_count():
        out.append(f"HDF5 dataset {where} keeps its data in external files, which is not allowed")
    for i in range(dcpl.get_nfilters()):
        code, _flags, _values, name = dcpl.get_filter(i)
        if code not in ALLOWED_FILTERS:
            label = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
            out.append(f"HDF5 dataset {where} uses the filter {label or '?'} ({code}); only "
                       f"{', '.join(ALLOWED_FILTERS.values())} is allowed")
    problem = type_problem(ds.id.get_type())
    if problem:
        out.append(f"HDF5 dataset {where} holds {problem}, which is not allowed")


def _check_attrs(obj, where: str, out: list[str]) -> None:
    for name in obj.attrs:
        problem = type_problem(obj.attrs.get_id(name).get_type())
        if problem:
            out.append(f"HDF5 attribute {name!r} of {where} holds {problem}, which is not allowed")


def _payload_problems(path: Path) -> list[str]:
    """Every item against its stored checksums (data.store.check_payload; an older store without them is
    refused too)."""
    from data.store import check_payload

    return check_payload(path)
