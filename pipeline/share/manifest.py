"""manifest.json: its bounded parsing and its schema, checked before any other file of a bundle is read.

A manifest lists per output folder the stage, benchmark, key, the key material the key is the hash of,
the key material of every upstream stage, and per file its path, size and sha256 (for shards also the
item count and completeness). Sizes are bounded only by the free space that is checked before extracting.
"""
from __future__ import annotations

import dataclasses
import json

from data import store
from pipeline.base import short_hash
from pipeline.share.errors import EXIT_DAMAGED, EXIT_UNREADABLE, EXIT_UNSAFE, Problems
from pipeline.share.names import (ALLOWED_SUFFIXES, KEY, MANIFEST, NAME, REPORT, SHA256, SHARD, file_kind,
                                  unsafe_relpath)

BUNDLE_FORMAT = "cfb-i2v-bundle"
BUNDLE_FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 64 << 20   # ~150 bytes a file: room for hundreds of thousands of shards
MAX_DEPTH = 32                  # the store's key material nests 4 deep; a deeper manifest is not ours
MAX_FILES = 1_000_000


@dataclasses.dataclass
class FolderPlan:
    """One validated output folder of a bundle and what importing it does."""

    rel: str
    stage: str
    benchmark: str
    key: str
    files: list[dict]
    entry: dict = dataclasses.field(repr=False, default_factory=dict)  # the manifest's folder entry
    to_copy: list[dict] = dataclasses.field(default_factory=list)
    state: str = "new"  # new: whole folder renamed into place; partial: missing files added; present: nothing

    @property
    def shards(self) -> list[dict]:
        return [f for f in self.files if file_kind(f["path"].rsplit("/", 1)[1]) == "shard"]


def _depth(obj) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        value, d = todo.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                return d
            todo.extend((v, d + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def parse_manifest(data: bytes, problems: Problems) -> dict | None:
    """The manifest object from its bytes, or None with the reason in `problems`."""
    if len(data) > MAX_MANIFEST_BYTES:
        problems.add(EXIT_UNREADABLE, f"{MANIFEST} is {len(data)} bytes; the limit is {MAX_MANIFEST_BYTES}")
        return None
    try:
        manifest = json.loads(data.decode("utf-8"))
    except RecursionError:
        problems.add(EXIT_UNREADABLE, f"{MANIFEST} nests deeper than {MAX_DEPTH} levels")
        return None
    except (ValueError, UnicodeDecodeError) as e:
        problems.add(EXIT_UNREADABLE, f"{MANIFEST} is not valid JSON: {e}")
        return None
    if _depth(manifest) > MAX_DEPTH:
        problems.add(EXIT_UNREADABLE, f"{MANIFEST} nests deeper than {MAX_DEPTH} levels")
        return None
    if not isinstance(manifest, dict):
        problems.add(EXIT_UNREADABLE, f"{MANIFEST} is not a JSON object")
        return None
    if manifest.get("format") != BUNDLE_FORMAT:
        problems.add(EXIT_UNREADABLE, f"{MANIFEST}: format is {str(manifest.get('format'))[:80]!r}, "
                                      f"expected {BUNDLE_FORMAT!r}")
        return None
    version = manifest.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        problems.add(EXIT_UNREADABLE, f"{MANIFEST}: bundle format version {str(version)[:40]} is not supported "
                                      f"(this code reads version {BUNDLE_FORMAT_VERSION})")
        return None
    return manifest


def _require(obj, key: str, types, where: str, problems: Problems):
    if not isinstance(obj, dict) or key not in obj:
        problems.add(EXIT_UNREADABLE, f"manifest: {where} lacks `{key}`")
        return None
    value = obj[key]
    # bool is an int in Python; in the manifest a count is never a boolean and a flag never a number
    ok = isinstance(value, bool) if types is bool else isinstance(value, types) and not isinstance(value, bool)
    if not ok:
        problems.add(EXIT_UNREADABLE, f"manifest: {where}.{key} has the wrong type ({type(value).__name__})")
        return None
    return value


def check_manifest(manifest: dict, problems: Problems) -> list[FolderPlan]:
    """The folders of a parsed manifest whose entries are well formed; every other entry is a problem."""
    entries = _require(manifest, "folders", list, "manifest", problems)
    if entries is None:
        return []
    if not entries:
        problems.add(EXIT_UNREADABLE, "manifest: lists no folders")
    if sum(len(e.get("files", ())) for e in entries if isinstance(e, dict)
           and isinstance(e.get("files"), list)) > MAX_FILES:
        problems.add(EXIT_UNSAFE, f"manifest: lists more than {MAX_FILES} files")
        return []
    plans, seen_folders, seen_files = [], set(), set()
    for i, entry in enumerate(entries):
        where = f"folders[{i}]"
        values = [_require(entry, k, t, where, problems) for k, t in
                  (("path", str), ("stage", str), ("benchmark", str), ("key", str), ("num_shards", int),
                   ("key_material", dict), ("files", list))]
        if any(v is None for v in values):
            continue
        rel, stage, benchmark, key, num_shards, material, files = values
        if "upstream_chain" in entry and not isinstance(entry["upstream_chain"], list):
            problems.add(EXIT_UNREADABLE, f"manifest: {where}.upstream_chain is not a list")
        why = unsafe_relpath(rel)
        if why:
            problems.add(EXIT_UNSAFE, f"manifest: folder path {rel[:300]!r} {why}")
            continue
        bad = [f"{n} {v[:80]!r}" for n, v, rx in (("stage", stage, NAME), ("benchmark", benchmark, NAME),
                                                  ("key", key, KEY)) if not rx.fullmatch(v)]
        if bad:
            problems.add(EXIT_UNSAFE, f"manifest: {where} has an invalid {', '.join(bad)}")
            continue
        if rel != f"{stage}/{benchmark}/{key}":
            problems.add(EXIT_UNSAFE, f"manifest: folder path {rel!r} is not <stage>/<benchmark>/<key> = "
                                      f"{stage}/{benchmark}/{key}")
            continue
        if rel in seen_folders:
            problems.add(EXIT_UNSAFE, f"manifest: folder {rel} is listed twice")
            continue
        seen_folders.add(rel)
        _check_material(rel, stage, benchmark, key, num_shards, material, problems)
        plan = FolderPlan(rel, stage, benchmark, key, [], entry)
        for j, f in enumerate(files):
            entry_ok = _check_file_entry(f, f"{where}.files[{j}]", rel, num_shards, seen_files, problems)
            if entry_ok:
                plan.files.append(f)
        if not any(file_kind(f["path"].rsplit("/", 1)[1]) == "params" for f in plan.files):
            problems.add(EXIT_UNREADABLE, f"manifest: folder {rel} has no params.json")
        if not plan.shards:
            problems.add(EXIT_UNREADABLE, f"manifest: folder {rel} has no shard file")
        plans.append(plan)
    return plans


def _check_file_entry(f, fwhere: str, rel: str, num_shards: int, seen: set, problems: Problems) -> bool:
    path = _require(f, "path", str, fwhere, problems)
    size = _require(f, "size", int, fwhere, problems)
    sha = _require(f, "sha256", str, fwhere, problems)
    if path is None or size is None or sha is None:
        return False
    why = unsafe_relpath(path)
    if why:
        problems.add(EXIT_UNSAFE, f"manifest: file path {path[:300]!r} {why}")
        return False
    parent, _, name = path.rpartition("/")
    if parent != rel:
        problems.add(EXIT_UNSAFE, f"manifest: file path {path!r} is not directly inside its folder {rel}")
        return False
    if not name.endswith(ALLOWED_SUFFIXES):
        problems.add(EXIT_UNSAFE, f"manifest: {path}: file type not allowed -- a bundle holds only JSON and HDF5")
        return False
    kind = file_kind(name)
    if kind is None:
        problems.add(EXIT_UNSAFE, f"manifest: {path}: unexpected file name (expected shard-NNNN-of-NNNN.h5 with "
                                  "ASCII digits, its .report.json or params.json)")
        return False
    if not SHA256.fullmatch(sha) or size < 0:
        problems.add(EXIT_UNREADABLE, f"manifest: {path}: invalid size or sha256")
        return False
    if path in seen:
        problems.add(EXIT_UNSAFE, f"manifest: {path} is listed twice")
        return False
    seen.add(path)
    if kind in ("shard", "report"):
        m = (SHARD if kind == "shard" else REPORT).fullmatch(name)
        idx, of = int(m.group(1)), int(m.group(2))
        if of != num_shards or idx >= of:
            problems.add(EXIT_DAMAGED, f"manifest: {path}: shard {idx} of {of} does not fit the folder's "
                                       f"{num_shards} shards")
            return False
    if kind == "shard":
        count = _require(f, "item_count", int, fwhere, problems)
        complete = _require(f, "complete", bool, fwhere, problems)
        if count is None or complete is None:
            return False
        if not complete:
            problems.add(EXIT_DAMAGED, f"manifest: {path} is marked incomplete")
            return False
    return True


def _check_material(rel, stage, benchmark, key, num_shards, material, problems: Problems) -> None:
    if short_hash(material) != key:
        problems.add(EXIT_DAMAGED, f"{rel}: the key {key} is not the hash of the recorded key material "
                                   f"({short_hash(material)}): parameters were changed after export")
    for field, expected in (("stage", stage), ("benchmark", benchmark), ("num_shards", num_shards)):
        if material.get(field) != expected:
            problems.add(EXIT_DAMAGED, f"{rel}: key material says {field} = {str(material.get(field))[:80]!r}, "
                                       f"the folder {expected!r}")
    if material.get("store_format") != store.FORMAT_VERSION:
        problems.add(EXIT_UNREADABLE, f"{rel}: store format version {str(material.get('store_format'))[:40]!r} "
                                      f"is not supported (this code reads version {store.FORMAT_VERSION})")
    if not isinstance(material.get("params"), dict):
        problems.add(EXIT_DAMAGED, f"{rel}: key material has no `params` object")


def listed_files(plans: list[FolderPlan]) -> dict[str, dict]:
    """path -> manifest file entry, over every folder."""
    return {f["path"]: f for plan in plans for f in plan.files}
