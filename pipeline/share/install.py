"""Installing a validated bundle into the workdir, all or nothing across folders.

Every folder is first staged: a new folder is copied whole into a temporary folder beside its
destination, a missing file of an existing folder into a temporary file beside it (shards last, so a shard
Luigi sees as done has its params.json and report beside it). Only when every copy is complete and equal to
the manifest is anything renamed into place, and if a rename fails, the ones already done are undone and
every temporary is removed: the workdir is as it was. A SIGKILL can still stop the renames half way; each
folder renamed is complete, and the rerun (which removes the dead import's temporaries) adds the rest.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from data.atomic import fsync_path, temporary_path_for
from pipeline.base import remove_stale_temporaries
from pipeline.share.errors import EXIT_DESTINATION, EXIT_INSTALL, BundleError, ImportStopped
from pipeline.share.files import SourceFile, UnsafeFile
from pipeline.share.manifest import FolderPlan
from pipeline.share.names import file_kind


def _copy(src: SourceFile, dst: Path) -> tuple[int, str]:
    # looked up on the package at call time, so a test driver can hook the copy (tests/test_faults.py)
    from pipeline import share

    return share._copy_file(src, dst)


def _free_bytes(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def install(root: Path, workdir: Path, folders: list[FolderPlan], subject: str) -> None:
    """Copy every folder's missing files from the bundle folder `root` into `workdir`, all or nothing."""
    plans = [p for p in folders if p.state != "present"]
    if not plans:
        return
    need = sum(f["size"] for p in plans for f in p.to_copy)
    try:
        free = _free_bytes(workdir)
    except OSError:
        free = None
    if free is not None and need > free:
        raise BundleError(f"cannot import {subject}:", [f"needs {need} bytes in {workdir}, which has {free} free"],
                          code=EXIT_DESTINATION, subject=subject)
    made: list[Path] = []       # folders this import created (removed again on failure)
    staged: list[tuple[Path, Path]] = []  # (temporary, final)
    done: list[Path] = []       # finals renamed into place
    try:
        for plan in plans:
            _stage(root, workdir, plan, made, staged, subject)
        for tmp, final in staged:
            if os.path.lexists(final):
                raise ImportStopped(f"import of {subject} stopped:",
                                    [f"{final} appeared during the import; run the import again"],
                                    code=EXIT_INSTALL, subject=subject)
            os.rename(tmp, final)
            done.append(final)
    except BaseException as e:
        leftovers = _roll_back(staged, done, made)
        if isinstance(e, BundleError):
            e.problems += leftovers
            raise
        if isinstance(e, (OSError, UnsafeFile)):
            why = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename else str(e)
            raise ImportStopped(f"import of {subject} stopped:",
                                [f"could not install ({why}); nothing was installed (every folder rolled back)"]
                                + leftovers, code=EXIT_INSTALL, subject=subject) from e
        raise
    for parent in sorted({final.parent for _, final in staged}):
        fsync_path(parent)


def _makedirs(workdir: Path, folder: Path, made: list[Path]) -> None:
    missing = []
    p = folder
    while not p.is_dir():
        missing.append(p)
        if p == p.parent:
            break
        p = p.parent
    for p in reversed(missing):
        p.mkdir()  # a file in the way raises here, before anything is copied
        made.append(p)


def _stage(root: Path, workdir: Path, plan: FolderPlan, made: list[Path], staged: list, subject: str) -> None:
    dest = workdir / plan.rel
    ordered = sorted(plan.to_copy, key=lambda f: file_kind(f["path"].rsplit("/", 1)[1]) == "shard")

    def copy(f, dst: Path) -> None:
        if _copy(SourceFile(root, f["path"], f["size"]), dst) != (f["size"], f["sha256"]):
            raise ImportStopped(f"import of {subject} stopped:", [f"{f['path']} changed during the import; "
                                "nothing was installed (every folder rolled back)"], code=EXIT_INSTALL,
                                subject=subject)

    if plan.state == "new":
        _makedirs(workdir, dest.parent, made)
        remove_stale_temporaries(dest.parent, (dest.name,))  # folders of killed imports
        tmp = temporary_path_for(dest)
        tmp.mkdir()
        made.append(tmp)
        for f in ordered:
            copy(f, tmp / f["path"].rsplit("/", 1)[1])
        fsync_path(tmp)
        staged.append((tmp, dest))
        return
    for f in ordered:
        final = workdir / f["path"]
        tmp = temporary_path_for(final)
        staged.append((tmp, final))
        copy(f, tmp)


def _roll_back(staged, done, made) -> list[str]:
    """Undo an install; returns what could not be undone (normally nothing)."""
    left = []
    for final in reversed(done):
        try:
            shutil.rmtree(final) if final.is_dir() and not final.is_symlink() else final.unlink()
        except OSError as e:
            left.append(f"rollback could not remove {final} ({e.strerror or e}); remove it by hand")
    for tmp, _ in staged:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    for p in reversed(made):
        if p.is_dir() and not p.is_symlink():
            if ".tmp-" in p.name:
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    p.rmdir()
                except OSError:
                    pass
    return left

