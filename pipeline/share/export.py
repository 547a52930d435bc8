"""Export: the outputs of chosen sharded stages, as the current luigi.cfg names them, into a new bundle
folder or .tar, with the manifest (and, with a key, its signature)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import time
from pathlib import Path

import h5py
import luigi

from data import store
from data.atomic import fsync_path, temporary_path_for
from pipeline.base import ShardedStage, write_json_atomic
from pipeline.share.errors import EXIT_EXPORT, BundleError
from pipeline.share.files import copy_file
from pipeline.share.manifest import BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION
from pipeline.share.names import MANIFEST
from pipeline.share.signing import sign_manifest
from pipeline.share.stages import SHAREABLE_STAGES, material_and_key, upstream_chain


def _fail(what: str, problems: list[str], subject: str = "") -> BundleError:
    return BundleError(what, problems, code=EXIT_EXPORT, subject=subject or what.rstrip(":"))


def select_tasks(benchmark: str, stages, domains=None, with_upstream: bool = False) -> list:
    """Every shard's task of the named stages under the current luigi.cfg (so the exported keys are exactly
    the ones this configuration uses). `domains` restricts stages with a domain parameter (ExtractFlow);
    None = both. `with_upstream` adds the sharded stages they are computed from."""
    if isinstance(stages, str):
        stages = [s.strip() for s in stages.split(",") if s.strip()]
    if isinstance(domains, str):
        domains = [d.strip() for d in domains.split(",") if d.strip()]
    problems, tasks = [], []
    for name in stages:
        cls = SHAREABLE_STAGES.get(name)
        if cls is None:
            problems.append(f"{name!r} is not a sharded HDF5 stage; shareable stages: "
                            f"{', '.join(sorted(SHAREABLE_STAGES))} (index stages hold this machine's absolute "
                            "paths and are recomputed from the data)")
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
        raise _fail("cannot select the stages to export:", problems, "export")
    if with_upstream:
        todo, seen = list(tasks), {t.task_id for t in tasks}
        while todo:
            for up in luigi.task.flatten(todo.pop().requires()):
                if isinstance(up, ShardedStage) and up.task_id not in seen:
                    seen.add(up.task_id)
                    tasks.append(up)
                    todo.append(up)
    return tasks


def export_bundle(tasks, out, workdir=None, sign_key=None) -> dict:
    """Write the outputs of `tasks` (sharded stage tasks) as a bundle at `out` (a new directory, or a .tar
    when the name ends in .tar); return the manifest. Refuses incomplete shards, naming each. With
    `sign_key` (an SSH private key file) the manifest is signed (manifest.json.sig)."""
    from pipeline.settings import workdir as configured_workdir

    root = Path(workdir).expanduser().resolve() if workdir is not None else configured_workdir()
    subject = str(out)
    out = Path(out).expanduser()
    if out.exists() or out.is_symlink():
        raise _fail(f"cannot export to {subject}:", ["it already exists (choose a new name)"], subject)
    if sign_key is not None and not Path(sign_key).expanduser().is_file():
        raise _fail(f"cannot export to {subject}:", [f"signing key {sign_key} does not exist"], subject)
    folders: dict[str, dict] = {}
    problems = []
    for task in tasks:
        material, key = material_and_key(task)
        rel = f"{task.stage_name}/{task.benchmark}/{key}"
        folder = folders.setdefault(rel, {"task": task, "material": material, "shards": {}})
        src = root / rel / task.shard_file().name
        if not store.is_complete(src):
            state = "missing" if not src.exists() else "incomplete or unreadable"
            extra = f" --domain {task.domain}" if "domain" in task.get_param_names() else ""
            problems.append(f"{task.stage_name}[{task.benchmark}{extra}] shard {task.shard + 1}/{task.n_shards}: "
                            f"{src} is {state}; run `luigi --module pipeline {task.stage_name} --benchmark "
                            f"{task.benchmark}{extra} --shard {task.shard} --local-scheduler` first")
        folder["shards"][task.shard] = task
    if not folders:
        raise _fail("nothing to export:", ["no stage selected"], subject)
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
        raise _fail(f"cannot export from {root}:", problems, subject)

    tmp = temporary_path_for(out)
    tmp_dir = tmp.with_name(tmp.name + ".d") if out.suffix == ".tar" else tmp
    try:
        tmp_dir.mkdir(parents=True)
        entries = [_export_folder(root, rel, folder, tmp_dir) for rel, folder in sorted(folders.items())]
        manifest = {
            "format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": store.library_versions(), "store_format_version": store.FORMAT_VERSION,
            "folders": entries,
        }
        write_json_atomic(tmp_dir / MANIFEST, manifest)
        if sign_key is not None:
            sign_manifest(tmp_dir / MANIFEST, Path(sign_key).expanduser(), subject)
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
            size, sha = copy_file(src, dst)
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
            raise _fail(f"cannot export {root / rel / name}:", ["the file changed while it was copied"])
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
            "upstream_chain": upstream_chain(task), "files": files}


def _write_tar(folder: Path, target: Path) -> None:
    """An uncompressed tar of `folder`'s regular files, paths relative to it (manifest and signature first)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    files.sort(key=lambda p: not p.name.startswith(MANIFEST))
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for p in files:
            info = tar.gettarinfo(str(p), arcname=p.relative_to(folder).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(p, "rb") as fh:
                tar.addfile(info, fh)
    fsync_path(target)
