"""Sharing precomputed datasets: export a stage's HDF5 outputs as a bundle, verify it, import it elsewhere.

    python -m pipeline.share export --benchmark SYN --stages ExtractFlow,DecodeTargetVideos --domain target \
        --out flows-syn [--workdir W] [--with-upstream]
    python -m pipeline.share verify flows-syn [--workdir W] [--no-expect-config]
    python -m pipeline.share import flows-syn [--workdir W] [--no-expect-config]

A bundle is a directory (or an uncompressed .tar of one) that mirrors the workdir layout,
``<Stage>/<benchmark>/<key>/{shard-XXXX-of-YYYY.h5, shard-XXXX-of-YYYY.report.json, params.json}``, plus
``manifest.json``: the bundle format version, when and with which library versions it was made, and per
output folder the stage, benchmark, key, the key material it hashes to (parameters, format versions,
upstream keys), the key material of every stage upstream of it (so a mismatch can name the parameter), and
per file its size, sha256 and, for shards, the item count and completeness.

Import trusts nothing in the bundle. Everything is validated before the workdir is touched: the manifest's
schema, every path (relative, no ``..``, inside its folder, named as the stage framework names files), no
symbolic links and no file that is not JSON or HDF5 (a bundle holds no pickle), every file's size and
sha256, each HDF5 file complete with the recorded item count, the store format version, the file's stage,
benchmark and parameters, no HDF5 soft/external links or object references, that each folder's key is the
hash of its key material and -- unless --no-expect-config -- that the current luigi.cfg gives the same key
(otherwise the differing parameters are named). Files are then copied into a temporary folder beside the
destination, fsynced and renamed into place, so Luigi sees each shard as done (``complete()`` is True).
A destination folder that already holds identical files is left as it is; a different file at the same
path is a conflict and nothing is copied.

Index stages (items.json) are not shared: they hold this machine's absolute paths, and the stages
downstream of the HDF5 stores read ids and labels from the stores, not from the index.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

import h5py
import luigi

from data import store
from data.atomic import fsync_path, temporary_path_for
from pipeline.base import ShardedStage, Stage, remove_stale_temporaries, short_hash, write_json_atomic

BUNDLE_FORMAT = "cfb-i2v-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ALLOWED_SUFFIXES = (".h5", ".json")  # only JSON and HDF5: a bundle never holds a pickle
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # stage and benchmark names (one path component)
_KEY = re.compile(r"^[0-9a-f]{12}$")                   # pipeline.base.short_hash
_SHARD = re.compile(r"^shard-(\d{4})-of-(\d{4})\.h5$")
_REPORT = re.compile(r"^shard-(\d{4})-of-(\d{4})\.report\.json$")
_CHUNK = 1 << 20


class BundleError(ValueError):
    """A bundle that cannot be exported, verified or imported; str() lists every problem found."""

    def __init__(self, what: str, problems: list[str], footer: str = ""):
        self.problems = list(problems)
        lines = [what] + [f"  - {p}" for p in self.problems]
        if footer:
            lines.append(footer)
        super().__init__("\n".join(lines))


class ImportStopped(BundleError):
    """The bundle passed validation but changed (or the workdir did) while it was copied; folders already
    renamed into place are complete and valid, the one in progress was removed."""


# --- helpers ---------------------------------------------------------------------------------------------

def _canonical(obj):
    """The JSON form of an object, as params.json and short_hash see it."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _material_and_key(task: Stage) -> tuple[dict, str]:
    """A stage's key material in its JSON form, and the folder key it gives (``Stage.output_key``)."""
    material = _canonical(task.key_material())
    return material, short_hash(material)


def _sha256_file(path: Path) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _copy_file(src: Path, dst: Path) -> tuple[int, str]:
    """Copy src to a new file dst (never overwrites, never follows a link), fsync; return size and sha256
    of the bytes written."""
    h, size = hashlib.sha256(), 0
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with open(src, "rb") as fi, os.fdopen(fd, "wb") as fo:
        while chunk := fi.read(_CHUNK):
            h.update(chunk)
            fo.write(chunk)
            size += len(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    return size, h.hexdigest()


def _unsafe_relpath(path) -> str | None:
    """Why `path` (from a manifest or a tar member) may not be used as a path inside a bundle, or None."""
    if not isinstance(path, str) or not path:
        return "is not a non-empty string"
    if "\\" in path or "\x00" in path:
        return "contains a backslash or NUL"
    if path.startswith("/") or PurePosixPath(path).is_absolute() or re.match(r"^[A-Za-z]:", path):
        return "is an absolute path"
    parts = path.split("/")
    if ".." in parts:
        return "escapes the bundle ('..')"
    if any(p in ("", ".") for p in parts):
        return "is not a normalised relative path"
    return None


def _file_kind(name: str) -> str | None:
    if _SHARD.match(name):
        return "shard"
    if _REPORT.match(name):
        return "report"
    if name == "params.json":
        return "params"
    return None


def _stage_classes() -> dict:
    """Name -> class of every sharded (HDF5) stage the pipeline defines."""
    import pipeline

    return {name: obj for name in dir(pipeline) if isinstance(obj := getattr(pipeline, name), type)
            and issubclass(obj, ShardedStage) and obj is not ShardedStage}


def _upstream_chain(task) -> list[dict]:
    """Key material of every stage `task` is computed from (breadth-first, each once)."""
    chain, seen, todo = [], set(), list(luigi.task.flatten(task.requires()))
    while todo:
        t = todo.pop(0)
        if not isinstance(t, Stage):
            continue
        material, key = _material_and_key(t)
        if (t.stage_name, key) in seen:
            continue
        seen.add((t.stage_name, key))
        chain.append({"stage": t.stage_name, "benchmark": t.benchmark, "key": key, "key_material": material})
        todo.extend(luigi.task.flatten(t.requires()))
    return chain


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _differences(bundle_material: dict, here_material: dict, ignore=("upstream",)) -> list[str]:
    a, b = _flatten(bundle_material), _flatten(here_material)
    out = []
    for k in sorted(set(a) | set(b)):
        if k.split(".")[0] in ignore:
            continue
        if a.get(k, "<unset>") != b.get(k, "<unset>"):
            out.append(f"{k}: bundle {json.dumps(a.get(k, '<unset>'))}, this configuration "
                       f"{json.dumps(b.get(k, '<unset>'))}")
    return out


def _task_for_folder(cls, benchmark: str, params: dict, shard: int = 0):
    """The task the current luigi.cfg makes for a folder's stage (parameters that are Luigi parameters of
    the stage, such as ExtractFlow's domain, come from the recorded key material; the rest from luigi.cfg)."""
    kwargs = {name: params[name] for name in cls.get_param_names()
              if name in params and name not in ("benchmark", "shard", "num_shards")}
    return cls(benchmark=benchmark, shard=shard, **kwargs)


# --- export ----------------------------------------------------------------------------------------------

def select_tasks(benchmark: str, stages, domains=None, with_upstream: bool = False) -> list:
    """Every shard's task of the named stages under the current luigi.cfg (so the exported keys are exactly
    the ones this configuration uses). `domains` restricts stages with a domain parameter (ExtractFlow);
    None = both. `with_upstream` adds the sharded stages they are computed from."""
    classes = _stage_classes()
    if isinstance(stages, str):
        stages = [s.strip() for s in stages.split(",") if s.strip()]
    if isinstance(domains, str):
        domains = [d.strip() for d in domains.split(",") if d.strip()]
    problems = []
    tasks = []
    for name in stages:
        cls = classes.get(name)
        if cls is None:
            problems.append(f"{name!r} is not a sharded HDF5 stage; shareable stages: {', '.join(sorted(classes))} "
                            "(index stages hold this machine's absolute paths and are recomputed from the data)")
            continue
        if "domain" in cls.get_param_names():
            for domain in domains or ("source", "target"):
                if domain not in ("source", "target"):
                    problems.append(f"unknown domain {domain!r} (use source, target or both)")
                    continue
                probe = cls(benchmark=benchmark, domain=domain)
                tasks += [cls(benchmark=benchmark, domain=domain, shard=i) for i in range(probe.n_shards)]
        else:
            probe = cls(benchmark=benchmark)
            tasks += [cls(benchmark=benchmark, shard=i) for i in range(probe.n_shards)]
    if problems:
        raise BundleError("cannot select the stages to export:", problems)
    if with_upstream:
        todo, seen = list(tasks), {t.task_id for t in tasks}
        while todo:
            for up in luigi.task.flatten(todo.pop().requires()):
                if isinstance(up, ShardedStage) and up.task_id not in seen:
                    seen.add(up.task_id)
                    tasks.append(up)
                    todo.append(up)
    return tasks


def export_bundle(tasks, out, workdir=None) -> dict:
    """Write the outputs of `tasks` (sharded stage tasks) as a bundle at `out` (a new directory, or a .tar
    when the name ends in .tar); return the manifest. Refuses incomplete shards, naming each."""
    from pipeline.settings import workdir as configured_workdir

    root = Path(workdir).expanduser().resolve() if workdir is not None else configured_workdir()
    out = Path(out).expanduser()
    if out.exists() or out.is_symlink():
        raise BundleError(f"cannot export to {out}:", ["it already exists (choose a new name)"])
    folders: dict[str, dict] = {}
    problems = []
    for task in tasks:
        material, key = _material_and_key(task)
        rel = f"{task.stage_name}/{task.benchmark}/{key}"
        folder = folders.get(rel)
        if folder is None:
            folder = folders[rel] = {"task": task, "material": material, "shards": {}}
        src = root / rel / task.shard_file().name
        if not store.is_complete(src):
            state = "missing" if not src.exists() else "incomplete or unreadable"
            extra = f" --domain {task.domain}" if "domain" in task.get_param_names() else ""
            problems.append(f"{task.stage_name}[{task.benchmark}{extra}] shard {task.shard + 1}/{task.n_shards}: "
                            f"{src} is {state}; run `luigi --module pipeline {task.stage_name} --benchmark "
                            f"{task.benchmark}{extra} --shard {task.shard} --local-scheduler` first")
        folder["shards"][task.shard] = task
    if not folders:
        raise BundleError("nothing to export:", ["no stage selected"])
    for rel, folder in folders.items():
        params_file = root / rel / "params.json"
        if params_file.is_file():
            try:
                recorded = json.loads(params_file.read_text(encoding="utf-8"))
            except ValueError as e:
                recorded = f"unreadable ({e})"
            if recorded != folder["material"]:
                problems.append(f"{params_file} does not match the key material this configuration computes "
                                f"for {rel}; the folder looks damaged")
    if problems:
        raise BundleError(f"cannot export from {root}:", problems)

    tmp = temporary_path_for(out)
    tmp_dir = tmp.with_name(tmp.name + ".d") if out.suffix == ".tar" else tmp
    try:
        tmp_dir.mkdir(parents=True)
        entries = []
        for rel, folder in sorted(folders.items()):
            entries.append(_export_folder(root, rel, folder, tmp_dir))
        manifest = {
            "format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": store.library_versions(), "store_format_version": store.FORMAT_VERSION,
            "folders": entries,
        }
        write_json_atomic(tmp_dir / MANIFEST, manifest)
        fsync_path(tmp_dir)
        if out.suffix == ".tar":
            _write_tar(tmp_dir, tmp)
            shutil.rmtree(tmp_dir)
        os.rename(tmp, out)
        fsync_path(out.resolve().parent)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if tmp.is_file():
            tmp.unlink()
        raise
    return manifest


def _export_folder(root: Path, rel: str, folder: dict, bundle: Path) -> dict:
    task, material = folder["task"], folder["material"]
    (bundle / rel).mkdir(parents=True)
    files = []

    def add(name: str, src: Path | None, data: bytes | None = None) -> dict:
        dst = bundle / rel / name
        if src is not None:
            size, sha = _copy_file(src, dst)
        else:
            dst.write_bytes(data)
            size, sha = len(data), hashlib.sha256(data).hexdigest()
        entry = {"path": f"{rel}/{name}", "size": size, "sha256": sha}
        files.append(entry)
        return entry

    params_file = root / rel / "params.json"
    if params_file.is_file():
        add("params.json", params_file)
    else:  # outputs written before params.json existed: record what the key hashes
        add("params.json", None, json.dumps(material, indent=2, sort_keys=True).encode())
    for shard in sorted(folder["shards"]):
        name = folder["shards"][shard].shard_file().name
        entry = add(name, root / rel / name)
        copied = bundle / rel / name
        if not store.is_complete(copied):  # changed while we copied it
            raise BundleError(f"cannot export {root / rel / name}:", ["the file changed while it was copied"])
        with h5py.File(copied, "r") as f:
            entry["item_count"] = int(f.attrs["item_count"])
            entry["complete"] = True  # store.is_complete(copied) above
            entry["versions"] = json.loads(f.attrs.get("versions", "{}"))
        report = root / rel / folder["shards"][shard].report_file().name
        if report.is_file():
            add(report.name, report)
    stage, benchmark, key = rel.split("/")
    return {"path": rel, "stage": stage, "benchmark": benchmark, "key": key,
            "num_shards": int(material.get("num_shards", 0)), "key_material": material,
            "upstream_chain": _upstream_chain(task), "files": files}


def _write_tar(folder: Path, target: Path) -> None:
    """An uncompressed tar of `folder`'s regular files, paths relative to it (manifest first)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name != MANIFEST)
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for p in files:
            info = tar.gettarinfo(str(p), arcname=p.relative_to(folder).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(p, "rb") as fh:
                tar.addfile(info, fh)
    fsync_path(target)


# --- validation --------------------------------------------------------------------------------------------

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
        return [f for f in self.files if _file_kind(f["path"].rsplit("/", 1)[1]) == "shard"]


@dataclasses.dataclass
class Bundle:
    """A validated bundle: its root (a directory) and folders."""

    root: Path
    manifest: dict
    folders: list[FolderPlan]


def _require(obj, key: str, types, where: str, problems: list[str]):
    if not isinstance(obj, dict) or key not in obj:
        problems.append(f"manifest: {where} lacks `{key}`")
        return None
    value = obj[key]
    # bool is an int in Python; in the manifest a count is never a boolean and a flag never a number
    ok = isinstance(value, bool) if types is bool else isinstance(value, types) and not isinstance(value, bool)
    if not ok:
        problems.append(f"manifest: {where}.{key} has the wrong type ({type(value).__name__})")
        return None
    return value


def verify_bundle(bundle, workdir=None, expect_config: bool = True) -> Bundle:
    """Validate a bundle directory completely (see the module docstring); raise BundleError listing every
    problem. With `workdir`, also check the destination folders for conflicts. Reads only."""
    root = Path(bundle).expanduser()
    if not root.is_dir():
        raise BundleError(f"bundle {root} rejected:", ["not a directory (or a .tar of one)"])
    root = root.resolve()
    problems: list[str] = []
    manifest = _read_manifest(root, problems)
    if manifest is None:
        raise BundleError(f"bundle {root} rejected:", problems)
    on_disk = _scan_tree(root, problems)
    folders = _check_manifest(manifest, problems)
    listed = {f["path"] for plan in folders for f in plan.files}
    for rel in sorted(on_disk - listed - {MANIFEST}):
        problems.append(f"{rel}: not listed in the manifest")
    classes = _stage_classes()
    for plan in folders:
        _check_files(root, plan, plan.entry["key_material"], on_disk, problems)
        if plan.stage not in classes:
            problems.append(f"{plan.rel}: unknown stage {plan.stage!r} (this pipeline shares "
                            f"{', '.join(sorted(classes))})")
        elif expect_config:
            _check_config(plan, classes[plan.stage], plan.entry, problems)
    if workdir is not None and not problems:
        _check_destination(Path(workdir), folders, problems)
    if problems:
        raise BundleError(f"bundle {root} rejected:", problems)
    return Bundle(root, manifest, folders)


def _read_manifest(root: Path, problems: list[str]) -> dict | None:
    path = root / MANIFEST
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        problems.append(f"{MANIFEST} is missing")
        return None
    if not stat.S_ISREG(st.st_mode):
        problems.append(f"{MANIFEST} is not a regular file (symbolic links are not allowed)")
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        problems.append(f"{MANIFEST} is not valid JSON: {e}")
        return None
    if not isinstance(manifest, dict):
        problems.append(f"{MANIFEST} is not a JSON object")
        return None
    if manifest.get("format") != BUNDLE_FORMAT:
        problems.append(f"{MANIFEST}: format is {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}")
        return None
    version = manifest.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        problems.append(f"{MANIFEST}: bundle format version {version!r} is not supported (this code reads "
                        f"version {BUNDLE_FORMAT_VERSION})")
        return None
    return manifest


def _scan_tree(root: Path, problems: list[str]) -> set[str]:
    """Relative paths of the regular files in the bundle; links, special files and any file that is not
    JSON or HDF5 are problems."""
    files = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                problems.append(f"{rel}: is a symbolic link (a bundle holds only regular files)")
            elif stat.S_ISDIR(st.st_mode):
                continue
            elif not stat.S_ISREG(st.st_mode):
                problems.append(f"{rel}: is not a regular file")
            elif not name.endswith(ALLOWED_SUFFIXES):
                problems.append(f"{rel}: file type not allowed -- a bundle holds only JSON and HDF5 files "
                                "(never a pickle or other executable format)")
            else:
                files.add(rel)
    return files


def _check_manifest(manifest: dict, problems: list[str]) -> list[FolderPlan]:
    entries = _require(manifest, "folders", list, "manifest", problems)
    if entries is None:
        return []
    if not entries:
        problems.append("manifest: lists no folders")
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
            problems.append(f"manifest: {where}.upstream_chain is not a list")
        why = _unsafe_relpath(rel)
        if why:
            problems.append(f"manifest: folder path {rel!r} {why}")
            continue
        bad = [f"{n} {v!r}" for n, v, rx in (("stage", stage, _NAME), ("benchmark", benchmark, _NAME),
                                             ("key", key, _KEY)) if not rx.match(v)]
        if bad:
            problems.append(f"manifest: {where} has an invalid {', '.join(bad)}")
            continue
        if rel != f"{stage}/{benchmark}/{key}":
            problems.append(f"manifest: folder path {rel!r} is not <stage>/<benchmark>/<key> = "
                            f"{stage}/{benchmark}/{key}")
            continue
        if rel in seen_folders:
            problems.append(f"manifest: folder {rel} is listed twice")
            continue
        seen_folders.add(rel)
        _check_material(rel, stage, benchmark, key, num_shards, material, problems)
        plan = FolderPlan(rel, stage, benchmark, key, [], entry)
        for j, f in enumerate(files):
            fwhere = f"{where}.files[{j}]"
            path = _require(f, "path", str, fwhere, problems)
            size = _require(f, "size", int, fwhere, problems)
            sha = _require(f, "sha256", str, fwhere, problems)
            if path is None or size is None or sha is None:
                continue
            why = _unsafe_relpath(path)
            if why:
                problems.append(f"manifest: file path {path!r} {why}")
                continue
            parent, _, name = path.rpartition("/")
            if parent != rel:
                problems.append(f"manifest: file path {path!r} is not directly inside its folder {rel}")
                continue
            if not name.endswith(ALLOWED_SUFFIXES):
                problems.append(f"manifest: {path}: file type not allowed -- a bundle holds only JSON and HDF5")
                continue
            kind = _file_kind(name)
            if kind is None:
                problems.append(f"manifest: {path}: unexpected file name (expected shard-XXXX-of-YYYY.h5, "
                                "its .report.json or params.json)")
                continue
            if not re.fullmatch(r"[0-9a-f]{64}", sha) or size < 0:
                problems.append(f"manifest: {path}: invalid size or sha256")
                continue
            if path in seen_files:
                problems.append(f"manifest: {path} is listed twice")
                continue
            seen_files.add(path)
            if kind in ("shard", "report"):
                m = (_SHARD if kind == "shard" else _REPORT).match(name)
                idx, of = int(m.group(1)), int(m.group(2))
                if of != num_shards or idx >= of:
                    problems.append(f"manifest: {path}: shard {idx} of {of} does not fit the folder's "
                                    f"{num_shards} shards")
                    continue
            if kind == "shard":
                count = _require(f, "item_count", int, fwhere, problems)
                complete = _require(f, "complete", bool, fwhere, problems)
                if count is None or complete is None:
                    continue
                if not complete:
                    problems.append(f"manifest: {path} is marked incomplete")
                    continue
            plan.files.append(f)
        if not any(_file_kind(f["path"].rsplit("/", 1)[1]) == "params" for f in plan.files):
            problems.append(f"manifest: folder {rel} has no params.json")
        if not plan.shards:
            problems.append(f"manifest: folder {rel} has no shard file")
        plans.append(plan)
    return plans


def _check_material(rel, stage, benchmark, key, num_shards, material, problems) -> None:
    if short_hash(material) != key:
        problems.append(f"{rel}: the key {key} is not the hash of the recorded key material "
                        f"({short_hash(material)}): parameters were changed after export")
    for field, expected in (("stage", stage), ("benchmark", benchmark), ("num_shards", num_shards)):
        if material.get(field) != expected:
            problems.append(f"{rel}: key material says {field} = {material.get(field)!r}, the folder {expected!r}")
    if material.get("store_format") != store.FORMAT_VERSION:
        problems.append(f"{rel}: store format version {material.get('store_format')!r} is not supported "
                        f"(this code reads version {store.FORMAT_VERSION})")
    if not isinstance(material.get("params"), dict):
        problems.append(f"{rel}: key material has no `params` object")


def _check_files(root: Path, plan: FolderPlan, material: dict, on_disk: set[str], problems: list[str]) -> None:
    for f in plan.files:
        rel = f["path"]
        if (root / rel).is_symlink():
            continue  # already reported by the scan
        if rel not in on_disk:
            problems.append(f"{rel}: listed in the manifest but missing from the bundle (or not a regular file)")
            continue
        path = root / rel
        size, sha = _sha256_file(path)
        if size != f["size"]:
            problems.append(f"{rel}: size {size} bytes, the manifest says {f['size']} (truncated or altered)")
            continue
        if sha != f["sha256"]:
            problems.append(f"{rel}: sha256 mismatch (the file was altered or damaged)")
            continue
        kind = _file_kind(path.name)
        if kind == "shard":
            problems.extend(f"{rel}: {p}" for p in _check_h5(path, f, plan, material))
        else:
            try:
                content = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                problems.append(f"{rel}: not valid JSON ({e})")
                continue
            if kind == "params" and content != material:
                problems.append(f"{rel}: differs from the key material in the manifest")


def _check_h5(path: Path, entry: dict, plan: FolderPlan, material: dict) -> list[str]:
    with open(path, "rb") as fh:
        if fh.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
            return ["not an HDF5 file"]
    if not store.is_complete(path):
        return ["not a complete HDF5 store file (truncated, unfinished or damaged)"]
    out = []
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            version = int(a.get("format_version", -1))
            if version != store.FORMAT_VERSION:
                out.append(f"store format version {version} is not supported (this code reads "
                           f"{store.FORMAT_VERSION})")
            if int(a["item_count"]) != entry["item_count"]:
                out.append(f"holds {int(a['item_count'])} items, the manifest says {entry['item_count']}")
            for field, expected in (("stage", plan.stage), ("benchmark", plan.benchmark)):
                if str(a.get(field, "")) != expected:
                    out.append(f"its {field} attribute is {str(a.get(field, ''))!r}, the folder's {expected!r}")
            try:
                file_params = json.loads(a.get("params", "null"))
            except (TypeError, ValueError):
                file_params = None
            if file_params != material.get("params"):
                out.append("its parameters differ from the folder's key material")
            out.extend(_check_h5_objects(f))
    except (OSError, KeyError, ValueError) as e:
        out.append(f"unreadable HDF5 ({e})")
    return out


def _check_h5_objects(f: h5py.File) -> list[str]:
    """The store uses hard links and plain datasets only: soft/external links (which may point outside the
    file) and object references are refused."""
    bad = []

    def visit(name):
        link = f.get(name, getlink=True)
        if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
            bad.append(f"HDF5 {type(link).__name__} at /{name} is not allowed")
            return None
        obj = f.get(name)
        if isinstance(obj, h5py.Dataset) and h5py.check_dtype(ref=obj.dtype) is not None:
            bad.append(f"HDF5 dataset /{name} holds object references, which are not allowed")
        return "stop" if len(bad) >= 5 else None

    f.visit_links(visit)
    return bad


def _check_config(plan: FolderPlan, cls, entry: dict, problems: list[str]) -> None:
    """The current luigi.cfg must give this folder's key, or Luigi would never use it."""
    material = entry["key_material"]
    try:
        task = _task_for_folder(cls, plan.benchmark, material.get("params", {}))
        here_material, here_key = _material_and_key(task)
    except Exception as e:  # a stage that cannot even be constructed here
        problems.append(f"{plan.rel}: cannot compute this stage's key under the current luigi.cfg "
                        f"({type(e).__name__}: {e})")
        return
    if here_key == plan.key:
        return
    diffs = _differences(material, here_material)
    bundle_chain = {c.get("stage"): c for c in entry.get("upstream_chain", []) if isinstance(c, dict)}
    try:
        for up in _upstream_chain(task):
            theirs = bundle_chain.get(up["stage"])
            if theirs is None or theirs.get("key") == up["key"] or not isinstance(theirs.get("key_material"), dict):
                continue
            diffs += [f"upstream {up['stage']}: {d}" for d in _differences(theirs["key_material"], up["key_material"])]
    except Exception:  # the explanation is best effort; the mismatch itself is already certain
        pass
    if not diffs:
        diffs = ["upstream keys differ (the bundle does not record which parameter)"]
    problems.append(f"{plan.rel}: parameter mismatch -- the current luigi.cfg gives key {here_key} for "
                    f"{plan.stage}[{plan.benchmark}], the bundle holds {plan.key}; differences: "
                    + "; ".join(diffs)
                    + ". Set the bundle's values in luigi.cfg (or import with --no-expect-config: Luigi will "
                      "not use the folder under the current settings)")


def _check_destination(workdir: Path, folders: list[FolderPlan], problems: list[str]) -> None:
    """Decide per folder what importing does; a different existing file is a conflict. Reads only."""
    workdir = workdir.expanduser().resolve()
    for plan in folders:
        dest = workdir / plan.rel
        if not dest.exists():
            plan.state, plan.to_copy = "new", list(plan.files)
            continue
        if not dest.is_dir():
            problems.append(f"{dest}: exists and is not a folder")
            continue
        plan.to_copy = []
        for f in plan.files:
            target = workdir / f["path"]
            if not target.exists():
                plan.to_copy.append(f)
            elif not target.is_file() or _sha256_file(target) != (f["size"], f["sha256"]):
                problems.append(f"{target}: conflict -- the workdir already holds a different file here; remove "
                                f"the folder {dest} to replace it with the bundle's")
        plan.state = "partial" if plan.to_copy else "present"


# --- import ------------------------------------------------------------------------------------------------

def import_bundle(bundle, workdir=None, expect_config: bool = True) -> list[FolderPlan]:
    """Validate `bundle` (directory or .tar) completely, then copy its folders atomically into `workdir`
    (default: luigi.cfg's). Returns the folder plans (state new/partial/present). Raises BundleError, with
    the workdir untouched, when anything is wrong."""
    from pipeline.settings import workdir as configured_workdir

    target = Path(workdir).expanduser().resolve() if workdir is not None else configured_workdir()
    with _opened(bundle) as root:
        checked = verify_bundle(root, workdir=target, expect_config=expect_config)
        for plan in checked.folders:
            _install(checked.root, target, plan)
    return checked.folders


class _opened:
    """A bundle as a directory: itself, or a .tar extracted (after checking every member) to a temporary
    directory (in $TMPDIR) that is removed afterwards."""

    def __init__(self, bundle):
        self.bundle = Path(bundle).expanduser()
        self.tmp = None

    def __enter__(self) -> Path:
        if self.bundle.is_file() and tarfile.is_tarfile(self.bundle):
            self.tmp = tempfile.TemporaryDirectory(prefix="cfb-i2v-bundle-")
            _extract_tar(self.bundle, Path(self.tmp.name))
            return Path(self.tmp.name)
        return self.bundle

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()


def _extract_tar(path: Path, dest: Path) -> None:
    """Extract only regular files with safe relative names (no links, devices, '..' or absolute names);
    anything else rejects the whole tar before a byte is written."""
    problems = []
    with tarfile.open(path, "r:") as tar:
        members = tar.getmembers()
        names = set()
        for m in members:
            why = _unsafe_relpath(m.name.rstrip("/") if m.isdir() else m.name)
            if why:
                problems.append(f"tar member {m.name!r} {why}")
            elif not (m.isreg() or m.isdir()):
                problems.append(f"tar member {m.name!r} is a link or special file (only regular files are allowed)")
            elif m.isreg() and m.name in names:
                problems.append(f"tar member {m.name!r} appears twice")
            names.add(m.name)
        if problems:
            raise BundleError(f"bundle {path} rejected:", problems)
        for m in members:
            if not m.isreg():
                continue
            out = dest / m.name
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as e:
                raise BundleError(f"bundle {path} rejected:", [f"tar member {m.name!r} clashes with another ({e})"])
            with tar.extractfile(m) as src, os.fdopen(fd, "wb") as fo:
                shutil.copyfileobj(src, fo, _CHUNK)


def _install(root: Path, workdir: Path, plan: FolderPlan) -> None:
    if plan.state == "present":
        return
    dest = workdir / plan.rel
    # Shards last: a shard that Luigi sees as done has its params.json and report beside it.
    ordered = sorted(plan.to_copy, key=lambda f: _file_kind(f["path"].rsplit("/", 1)[1]) == "shard")

    def copy(f, dst: Path) -> None:
        if _copy_file(root / f["path"], dst) != (f["size"], f["sha256"]):
            raise ImportStopped(f"import of {plan.rel} stopped:", [f"{f['path']} changed during the import"])

    if plan.state == "new":
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(dest.parent, (dest.name,))  # folders of killed imports
        tmp = temporary_path_for(dest)
        tmp.mkdir()
        try:
            for f in ordered:
                copy(f, tmp / f["path"].rsplit("/", 1)[1])
            fsync_path(tmp)
            try:
                os.rename(tmp, dest)  # fails (and nothing changes) if the folder appeared meanwhile
            except OSError as e:
                raise ImportStopped(f"import of {plan.rel} stopped:",
                                    [f"{dest} appeared during the import ({e}); run the import again"]) from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_path(dest.parent)
    else:  # the folder exists with part of the files (e.g. other shards computed here): add the rest
        for f in ordered:
            final = workdir / f["path"]
            tmp = temporary_path_for(final)
            try:
                copy(f, tmp)
                if final.exists():
                    raise ImportStopped(f"import of {plan.rel} stopped:", [f"{final} appeared during the import"])
                os.rename(tmp, final)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        fsync_path(dest)


def verify(bundle, workdir=None, expect_config: bool = True) -> Bundle:
    """verify_bundle for a directory or a .tar."""
    with _opened(bundle) as root:
        return verify_bundle(root, workdir=workdir, expect_config=expect_config)


# --- command line ------------------------------------------------------------------------------------------

def _use_workdir(workdir) -> None:
    if workdir:
        from luigi.configuration import get_config

        cfg = get_config()
        if not cfg.has_section("paths"):
            cfg.add_section("paths")
        cfg.set("paths", "workdir", str(Path(workdir).expanduser().resolve()))


def _summary(folders: list[FolderPlan], copied: bool) -> str:
    lines = []
    for plan in folders:
        items = sum(f["item_count"] for f in plan.shards)
        state = {"new": "copied" if copied else "new here", "partial": "missing files added" if copied
                 else "some files already here", "present": "already in the workdir"}[plan.state]
        lines.append(f"  {plan.rel}: {len(plan.shards)} shard(s), {items} items ({state})")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.share",
                                     description="Share precomputed stage outputs between workdirs.")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write a bundle of stages' HDF5 outputs with a manifest")
    ex.add_argument("--benchmark", default="SYN")
    ex.add_argument("--stages", required=True,
                    help="comma-separated sharded stages, e.g. ExtractFlow,DecodeTargetVideos")
    ex.add_argument("--domain", default="both", choices=["source", "target", "both"],
                    help="for stages with a domain (ExtractFlow); default both")
    ex.add_argument("--with-upstream", action="store_true", help="also export the sharded stages they read")
    ex.add_argument("--out", required=True, help="new bundle directory (or NAME.tar)")
    ex.add_argument("--workdir", help="workdir to read (default: [paths] workdir of luigi.cfg)")
    for name, text in (("import", "validate a bundle and copy it into the workdir"),
                       ("verify", "validate a bundle only (nothing is written)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("bundle")
        p.add_argument("--workdir", help="destination workdir (default: [paths] workdir of luigi.cfg)")
        p.add_argument("--expect-config", dest="expect_config", action="store_true", default=True,
                       help="require that the current luigi.cfg gives the bundle's keys (default)")
        p.add_argument("--no-expect-config", dest="expect_config", action="store_false",
                       help="check only the bundle's own consistency")
    args = parser.parse_args(argv)
    _use_workdir(args.workdir)
    from pipeline.settings import workdir

    try:
        if args.command == "export":
            domains = None if args.domain == "both" else [args.domain]
            tasks = select_tasks(args.benchmark, args.stages, domains, args.with_upstream)
            manifest = export_bundle(tasks, args.out)
            n = sum(len(e["files"]) for e in manifest["folders"])
            print(f"exported {len(manifest['folders'])} folder(s), {n} files to {args.out}")
        elif args.command == "verify":
            checked = verify(args.bundle, workdir=workdir(), expect_config=args.expect_config)
            print(f"bundle {args.bundle} is valid:\n{_summary(checked.folders, False)}")
        else:
            folders = import_bundle(args.bundle, expect_config=args.expect_config)
            print(f"imported {args.bundle} into {workdir()}:\n{_summary(folders, True)}")
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        if args.command == "import" and not isinstance(e, ImportStopped):
            print("the workdir was not changed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
