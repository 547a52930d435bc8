"""Checking a bundle folder completely before anything is written: manifest, signature, every file against
the manifest, every HDF5 file against the content policy, the keys against luigi.cfg, the destination."""
from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import h5py

from data import store
from pipeline.share import hdf5
from pipeline.share.errors import (EXIT_DAMAGED, EXIT_DESTINATION, EXIT_MISMATCH, EXIT_SIGNATURE, EXIT_UNREADABLE,
                                   EXIT_UNSAFE, BundleError, Problems)
from pipeline.share.files import SourceFile, UnsafeFile, WrongSize, open_regular, sha256_file
from pipeline.share.manifest import (MAX_MANIFEST_BYTES, FolderPlan, check_manifest, listed_files,
                                     parse_manifest)
from pipeline.share.names import ALLOWED_SUFFIXES, MANIFEST, SIGNATURE, file_kind
from pipeline.share.signing import MAX_SIGNATURE_BYTES, verify_signature
from pipeline.share.stages import SHAREABLE_STAGES, differences, material_and_key, task_for_folder, upstream_chain

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclasses.dataclass
class Bundle:
    """A validated bundle: its root (a directory), manifest, folders and who signed it."""

    root: Path
    manifest: dict
    folders: list[FolderPlan]
    signature: str = "not signed"  # what the command prints about the signature


def signature_status(manifest: bytes, signature: bytes | None, allowed_signers, require: bool,
                     subject: str) -> str:
    """What to say about a bundle's signature; BundleError when one is required and missing or is bad."""
    def fail(text: str) -> BundleError:
        return BundleError(f"bundle {subject} rejected:", [text], code=EXIT_SIGNATURE, subject=subject)

    if require and not allowed_signers:
        raise fail("a signature is required but no allowed-signers file was given (--allowed-signers FILE)")
    if signature is None:
        if require:
            raise fail(f"is not signed ({SIGNATURE} is missing), and a signature is required")
        return "not signed"
    if not allowed_signers:
        return "signed, signature not checked (no --allowed-signers file given)"
    return f"signed by {verify_signature(manifest, signature, Path(allowed_signers), subject)}"


def read_small_file(root: Path, name: str, limit: int) -> bytes:
    """A file at the bundle's root, read through an O_NOFOLLOW descriptor, at most `limit` bytes."""
    fd = open_regular(SourceFile(root, name))
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limit:
            raise UnsafeFile(f"is {size} bytes; the limit is {limit}")
        return fh.read(limit + 1)


def verify_bundle(bundle, workdir=None, expect_config: bool = True, *, label: str | None = None,
                  hashed: frozenset = frozenset(), allowed_signers=None, require_signature: bool = False,
                  signature: str | None = None) -> Bundle:
    """Validate a bundle directory completely; raise BundleError listing every problem. With `workdir`,
    also check the destination folders. Reads only. `label` is the bundle as the user named it (a .tar
    whose extraction this folder is); `hashed` lists files whose sha256 was checked while extracting them
    into a private folder; `signature`, the signature status when already checked there."""
    root = Path(bundle).expanduser()
    subject = label or str(bundle)
    what = f"bundle {subject} rejected:"
    if not root.is_dir():
        raise BundleError(what, ["not a directory (or an uncompressed .tar of one)"], code=EXIT_UNREADABLE,
                          subject=subject)
    root = root.resolve()
    problems = Problems()
    try:
        data = read_small_file(root, MANIFEST, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        problems.add(EXIT_UNREADABLE, f"{MANIFEST} is missing")
    except UnsafeFile as e:
        problems.add(EXIT_UNREADABLE, f"{MANIFEST} {e} (it must be a regular file; symbolic links are not allowed)")
    except OSError as e:
        problems.add(EXIT_UNREADABLE, f"{MANIFEST} cannot be read ({e.strerror or e})")
    manifest = None if problems else parse_manifest(data, problems)
    problems.raise_if_any(what, subject)
    if signature is None:
        sig = None
        try:
            sig = read_small_file(root, SIGNATURE, MAX_SIGNATURE_BYTES)
        except FileNotFoundError:
            pass
        except (UnsafeFile, OSError) as e:
            raise BundleError(what, [f"{SIGNATURE} {e}"], code=EXIT_SIGNATURE, subject=subject) from None
        signature = signature_status(data, sig, allowed_signers, require_signature, subject)

    on_disk = _scan_tree(root, problems)
    folders = check_manifest(manifest, problems)
    listed = listed_files(folders)
    for rel in sorted(on_disk - set(listed) - {MANIFEST, SIGNATURE}):
        problems.add(EXIT_UNSAFE, f"{rel}: not listed in the manifest")
    for plan in folders:
        _check_files(root, plan, plan.entry["key_material"], on_disk, hashed, problems)
        if plan.stage not in SHAREABLE_STAGES:
            problems.add(EXIT_MISMATCH, f"{plan.rel}: unknown stage {plan.stage!r} (this pipeline shares "
                                        f"{', '.join(sorted(SHAREABLE_STAGES))})")
        elif expect_config:
            _check_config(plan, SHAREABLE_STAGES[plan.stage], plan.entry, problems)
    if workdir is not None and not problems:
        check_destination(Path(workdir), folders, problems)
    problems.raise_if_any(what, subject)
    return Bundle(root, manifest, folders, signature)


def _scan_tree(root: Path, problems: Problems) -> set[str]:
    """Relative paths of the regular files in the bundle; links, special files and any file that is not
    JSON or HDF5 (or the manifest's signature) are problems."""
    files = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                problems.add(EXIT_UNSAFE, f"{rel}: is a symbolic link (a bundle holds only regular files)")
            elif stat.S_ISDIR(st.st_mode):
                continue
            elif not stat.S_ISREG(st.st_mode):
                problems.add(EXIT_UNSAFE, f"{rel}: is not a regular file")
            elif not name.endswith(ALLOWED_SUFFIXES) and rel != SIGNATURE:
                problems.add(EXIT_UNSAFE, f"{rel}: file type not allowed -- a bundle holds only JSON and HDF5 "
                                          "files (never a pickle or other executable format)")
            else:
                files.add(rel)
    return files


def _check_files(root: Path, plan: FolderPlan, material: dict, on_disk: set[str], hashed: frozenset,
                 problems: Problems) -> None:
    for f in plan.files:
        rel = f["path"]
        if (root / rel).is_symlink():
            continue  # already reported by the scan
        if rel not in on_disk:
            problems.add(EXIT_DAMAGED, f"{rel}: listed in the manifest but missing from the bundle (or not a "
                                       "regular file)")
            continue
        if rel not in hashed:
            try:
                size, sha = sha256_file(SourceFile(root, rel, f["size"]))
            except WrongSize as e:
                problems.add(EXIT_DAMAGED, f"{rel}: {e}")
                continue
            except UnsafeFile as e:
                problems.add(EXIT_UNSAFE, f"{rel}: {e}")
                continue
            except OSError as e:
                problems.add(EXIT_UNREADABLE, f"{rel}: cannot be read ({e.strerror or e})")
                continue
            if sha != f["sha256"]:
                problems.add(EXIT_DAMAGED, f"{rel}: sha256 mismatch (the file was altered or damaged)")
                continue
        path = root / rel
        kind = file_kind(path.name)
        if kind == "shard":
            for code, text in _check_h5(path, f, plan, material):
                problems.add(code, f"{rel}: {text}")
        else:
            try:
                content = json.loads(path.read_bytes().decode("utf-8"))
            except RecursionError:
                problems.add(EXIT_DAMAGED, f"{rel}: not valid JSON (nested too deep)")
                continue
            except (ValueError, UnicodeDecodeError) as e:
                problems.add(EXIT_DAMAGED, f"{rel}: not valid JSON ({e})")
                continue
            if kind == "params" and content != material:
                problems.add(EXIT_DAMAGED, f"{rel}: differs from the key material in the manifest")


def _check_h5(path: Path, entry: dict, plan: FolderPlan, material: dict) -> list[tuple[int, str]]:
    """Policy first (nothing it refuses is followed), then what the store promises about the file."""
    with open(path, "rb") as fh:
        if fh.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
            return [(EXIT_DAMAGED, "not an HDF5 file")]
    try:
        policy = hdf5.policy_problems(path)
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes h5py raise is a finding, not a bug
        return [(EXIT_DAMAGED, f"not a complete HDF5 store file (truncated, unfinished or damaged: {_short(e)})")]
    if policy:
        return [(EXIT_UNSAFE, p) for p in policy]
    if not store.is_complete(path):
        return [(EXIT_DAMAGED, "not a complete HDF5 store file (truncated, unfinished or damaged)")]
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
                    out.append(f"its {field} attribute is {str(a.get(field, ''))[:80]!r}, the folder's {expected!r}")
            try:
                file_params = json.loads(a.get("params", "null"))
            except (TypeError, ValueError, RecursionError):
                file_params = None
            if file_params != material.get("params"):
                out.append("its parameters differ from the folder's key material")
    except (OSError, KeyError, ValueError, RuntimeError, TypeError, UnicodeError) as e:
        out.append(f"unreadable HDF5 ({_short(e)})")
    out.extend(hdf5._payload_problems(path))
    return [(EXIT_DAMAGED, p) for p in out]


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 200 else text[:200] + "..."


def _check_config(plan: FolderPlan, cls, entry: dict, problems: Problems) -> None:
    """The current luigi.cfg must give this folder's key, or Luigi would never use it."""
    material = entry["key_material"]
    try:
        task = task_for_folder(cls, plan.benchmark, material.get("params", {}))
        here_material, here_key = material_and_key(task)
    except Exception as e:  # a stage that cannot even be constructed here
        problems.add(EXIT_MISMATCH, f"{plan.rel}: cannot compute this stage's key under the current luigi.cfg "
                                    f"({type(e).__name__}: {_short(e)})")
        return
    if here_key == plan.key:
        return
    diffs = differences(material, here_material)
    bundle_chain = {c.get("stage"): c for c in entry.get("upstream_chain", []) if isinstance(c, dict)}
    try:
        for up in upstream_chain(task):
            theirs = bundle_chain.get(up["stage"])
            if theirs is None or theirs.get("key") == up["key"] or not isinstance(theirs.get("key_material"), dict):
                continue
            diffs += [f"upstream {up['stage']}: {d}" for d in differences(theirs["key_material"], up["key_material"])]
    except Exception:  # the explanation is best effort; the mismatch itself is already certain
        pass
    if not diffs:
        diffs = ["upstream keys differ (the bundle does not record which parameter)"]
    problems.add(EXIT_MISMATCH, f"{plan.rel}: parameter mismatch -- the current luigi.cfg gives key {here_key} for "
                                f"{plan.stage}[{plan.benchmark}], the bundle holds {plan.key}; differences: "
                                + "; ".join(diffs)
                                + ". Set the bundle's values in luigi.cfg (or import with --no-expect-config: "
                                  "Luigi will not use the folder under the current settings)")


def check_destination(workdir: Path, folders: list[FolderPlan], problems: Problems) -> None:
    """Decide per folder what importing does; a different existing file, or a file where a folder belongs,
    is a problem. Reads only."""
    workdir = workdir.expanduser().resolve()
    for plan in folders:
        dest = workdir / plan.rel
        blocked = next((p for p in [workdir, *(workdir / "/".join(plan.rel.split("/")[:i]) for i in (1, 2, 3))]
                        if os.path.lexists(p) and not p.is_dir()), None)
        if blocked is not None:
            problems.add(EXIT_DESTINATION, f"{blocked}: exists and is not a folder (the bundle's {plan.rel} "
                                           "belongs there)")
            continue
        if not dest.exists():
            plan.state, plan.to_copy = "new", list(plan.files)
            continue
        plan.to_copy = []
        for f in plan.files:
            target = workdir / f["path"]
            if not os.path.lexists(target):
                plan.to_copy.append(f)
                continue
            try:
                same = sha256_file(target, f["size"]) == (f["size"], f["sha256"])
            except (UnsafeFile, OSError):
                same = False
            if not same:
                problems.add(EXIT_DESTINATION, f"{target}: conflict -- the workdir already holds a different file "
                                               f"here; remove the folder {dest} to replace it with the bundle's")
        plan.state = "partial" if plan.to_copy else "present"
