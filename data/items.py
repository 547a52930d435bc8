"""Items: one labelled (or unlabelled) image or video of a dataset, and the item lists the index stages write.

An :class:`Item` is what every stage after indexing addresses: ``id`` is the file's path relative to the
dataset's media directory (POSIX separators, Unicode NFC), so it is the same on every machine that holds the
dataset, whatever the absolute location; ``path`` is where the file is on this machine. Sharding works on the
list sorted by ``id``, so a shard is the same set of items wherever and whenever it is computed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from data.atomic import atomic_write_bytes

ITEMS_FORMAT = "cfb-i2v-items"
ITEMS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Item:
    """One media file. ``label`` is the benchmark's class index, or -1 when unknown."""

    id: str
    path: str
    label: int
    class_name: str


def _check_unique_ids(items: Sequence[Item]) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ValueError(f"duplicate item id {item.id!r}: ids must be unique within one item list")
        seen.add(item.id)


def sorted_items(items: Iterable[Item]) -> list[Item]:
    """The items sorted by id (the order shards are cut from)."""
    return sorted(items, key=lambda item: item.id)


def shard_slice(items: Sequence[Item], shard: int, num_shards: int) -> list[Item]:
    """Shard ``shard`` of ``num_shards``: items ``shard*n//num_shards .. (shard+1)*n//num_shards`` of the
    list sorted by id. Every item is in exactly one shard; shard sizes differ by at most one."""
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < num_shards:
        raise ValueError(f"shard must be an integer in [0, {num_shards}), got {shard!r}")
    _check_unique_ids(items)
    ordered = sorted_items(items)
    n = len(ordered)
    return ordered[shard * n // num_shards:(shard + 1) * n // num_shards]


def write_items(path: str | os.PathLike, items: Sequence[Item], meta: Mapping[str, Any] | None = None) -> None:
    """Write an item list as JSON (atomically). ``meta`` is any JSON-serialisable description
    (benchmark, dataset, split, skipped files, ...). Items are stored sorted by id."""
    items = list(items)
    for item in items:
        if not isinstance(item, Item):
            raise TypeError(f"write_items expects Item objects, got {type(item).__name__}")
    _check_unique_ids(items)
    doc = {
        "format": ITEMS_FORMAT,
        "version": ITEMS_FORMAT_VERSION,
        "count": len(items),
        "meta": dict(meta) if meta is not None else {},
        "items": [asdict(item) for item in sorted_items(items)],
    }
    data = json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8")
    atomic_write_bytes(Path(path), data)


def _bad(path: Path, reason: str) -> Exception:
    try:
        from data.errors import BadInputError
    except ImportError:  # the lead's error module may land later; a ValueError says the same
        return ValueError(f"{path}: {reason}")
    return BadInputError(str(path), reason)


def read_items(path: str | os.PathLike) -> tuple[list[Item], dict[str, Any]]:
    """Read a file written by :func:`write_items`; returns ``(items sorted by id, meta)``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"not a JSON item list ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != ITEMS_FORMAT:
        raise _bad(path, f"not an item list (expected format {ITEMS_FORMAT!r})")
    if doc.get("version") != ITEMS_FORMAT_VERSION:
        raise _bad(path, f"item list version {doc.get('version')!r}, this code reads {ITEMS_FORMAT_VERSION}")
    rows = doc.get("items")
    if not isinstance(rows, list) or doc.get("count") != len(rows):
        raise _bad(path, "item count does not match the stored count (truncated or edited file?)")
    items = []
    for k, row in enumerate(rows):
        try:
            item = Item(id=str(row["id"]), path=str(row["path"]), label=int(row["label"]),
                        class_name=str(row["class_name"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad(path, f"item {k} is malformed: {exc!r}") from exc
        items.append(item)
    try:
        _check_unique_ids(items)
    except ValueError as exc:
        raise _bad(path, str(exc)) from exc
    meta = doc.get("meta") or {}
    return sorted_items(items), meta
