"""Seeded fuzzing of bundle import: a few hundred mutations of one real small bundle (truncations, byte flips,
tar members shuffled, duplicated or removed, manifest edits, shard bytes flipped under a rewritten manifest).
Each ends either in a clean import whose installed files verify, or in error lines that each name the bundle
as typed, with a documented nonzero exit code, no traceback, and the destination workdir byte for byte as it
was. Cases run in-process through the CLI's own entry (`pipeline.share.main`); a few also as the command."""
from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from data.store import check_payload
from pipeline import share
from pipeline.share import errors
from tests.pipeline_helpers import REPO
from tests.test_share_support import built, configure, tree_digest, reset_after  # noqa: F401 (fixtures)

SEED = 14
CASES = 300               # mutations run in-process
CLI_CASES = 3             # of them, also run as `python -m pipeline.share` (about a second each)
CASE_TIME_LIMIT_S = 30    # a case still running after this is a hang (a case normally takes a fraction of a second)
DOCUMENTED = {errors.EXIT_UNREADABLE, errors.EXIT_UNSAFE, errors.EXIT_DAMAGED, errors.EXIT_MISMATCH,
              errors.EXIT_SIGNATURE, errors.EXIT_DESTINATION, errors.EXIT_INSTALL}


class Hang(BaseException):
    """Raised by the alarm; a BaseException so that the CLI's catch-all does not turn it into exit 70."""


# --- mutations: each returns the bundle's name as typed (a .tar or a folder in the case's directory) ----------

def _tar(case: Path, data: bytes) -> str:
    (case / "b.tar").write_bytes(data)
    return "b.tar"


def _members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]


def _retar(members) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info = copy_info(info)
            if data is None:
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def copy_info(info: tarfile.TarInfo) -> tarfile.TarInfo:
    new = tarfile.TarInfo(info.name)
    new.type, new.mode, new.size, new.mtime = info.type, info.mode, info.size, info.mtime
    return new


def truncate(rng, src, case):
    return _tar(case, src.tar[:rng.randrange(len(src.tar))])


def flip_tar_byte(rng, src, case):
    data = bytearray(src.tar)
    # half the flips land in the first 8 KiB (headers and manifest), the rest anywhere
    offset = rng.randrange(min(8192, len(data))) if rng.random() < 0.5 else rng.randrange(len(data))
    data[offset] ^= rng.randrange(1, 256)
    return _tar(case, bytes(data))


def shuffle_members(rng, src, case):
    members = _members(src.tar)
    rng.shuffle(members)
    return _tar(case, _retar(members))


def duplicate_member(rng, src, case):
    members = _members(src.tar)
    members.insert(rng.randrange(len(members) + 1), rng.choice(members))
    return _tar(case, _retar(members))


def remove_member(rng, src, case):
    members = _members(src.tar)
    del members[rng.randrange(len(members))]
    return _tar(case, _retar(members))


def _leaves(obj, path=()):
    """Every (path, value) inside parsed JSON, containers included."""
    yield path, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _leaves(v, path + (k,))


REPLACEMENTS = (None, True, 0, -1, 7, 2 ** 63, 1.5, "", "x", "../x.json", "/etc/passwd", "shard-\u0660-of-0001.h5",
                "a" * 300, [], {}, [[[]]], {"a": {}})


def edit_manifest(rng, src, case):
    manifest = json.loads(src.manifest)
    path, value = rng.choice(list(_leaves(manifest))[1:])
    parent = manifest
    for k in path[:-1]:
        parent = parent[k]
    how = rng.randrange(3)
    if how == 0 and isinstance(parent, (dict, list)):
        del parent[path[-1]]
    elif how == 1 and isinstance(value, str) and value:
        i = rng.randrange(len(value))
        parent[path[-1]] = value[:i] + chr(rng.choice((ord(value[i]) ^ 1, 0x30, 0x660, 0x2f))) + value[i + 1:]
    else:
        parent[path[-1]] = rng.choice(REPLACEMENTS)
    members = [(m, json.dumps(manifest).encode() if m.name == share.MANIFEST else d) for m, d in _members(src.tar)]
    return _tar(case, _retar(members))


def flip_shard_byte_and_rehash(rng, src, case):
    """The manifest is rewritten to match, so the HDF5 checks (policy, completeness, payload) see the damage."""
    bundle = Path(shutil.copytree(src.folder, case / "b"))
    manifest = json.loads(src.manifest)
    entry = rng.choice([f for folder in manifest["folders"] for f in folder["files"] if f["path"].endswith(".h5")])
    data = bytearray((bundle / entry["path"]).read_bytes())
    offset = rng.randrange(min(4096, len(data))) if rng.random() < 0.5 else rng.randrange(len(data))
    data[offset] ^= rng.randrange(1, 256)
    (bundle / entry["path"]).write_bytes(bytes(data))
    entry["sha256"] = hashlib.sha256(data).hexdigest()
    (bundle / share.MANIFEST).write_text(json.dumps(manifest))
    return "b"


MUTATIONS = {f.__name__: (f, weight) for f, weight in (
    (truncate, 3), (flip_tar_byte, 4), (shuffle_members, 1), (duplicate_member, 1), (remove_member, 1),
    (edit_manifest, 4), (flip_shard_byte_and_rehash, 4))}


# --- running a case --------------------------------------------------------------------------------------

class Source:
    """The unmutated bundle: its .tar bytes, folder and manifest bytes."""

    def __init__(self, built: Path):
        self.tar = (built / "bundle.tar").read_bytes()
        self.folder = built / "bundle"
        self.manifest = (self.folder / share.MANIFEST).read_bytes()


def fresh_workdir(case: Path) -> Path:
    work = case / "work"
    (work / "ExtractFlow").mkdir(parents=True)
    (work / "notes.txt").write_text("someone's workdir")
    return work


def _alarm(signum, frame):
    raise Hang()


def import_in_process(name: str, capsys) -> tuple[int, str]:
    capsys.readouterr()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_TIME_LIMIT_S)
    try:
        rc = share.main(["import", name, "--workdir", "work"])
    except Hang:
        pytest.fail(f"import of {name} ran longer than {CASE_TIME_LIMIT_S} s (a hang)")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return rc, capsys.readouterr().err


def import_as_command(name: str, case: Path) -> tuple[int, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LUIGI_CONFIG_PATH": os.environ["LUIGI_CONFIG_PATH"],
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pipeline.share", "import", name, "--workdir", "work"], cwd=case,
                          env=env, capture_output=True, text=True, timeout=CASE_TIME_LIMIT_S * 4)
    return proc.returncode, proc.stderr


def check_rejection(name: str, rc: int, err: str, what: str = "") -> None:
    lines = err.strip().splitlines()
    assert rc in DOCUMENTED, f"{what}{name}: exit {rc} is not a documented code:\n{err}"
    assert lines and "Traceback" not in err, err
    assert all(line.startswith(f"error: {name}: ") for line in lines), err
    assert lines[-1].endswith(f"exit {rc}); the workdir was not changed"), err


def check_installed(case: Path, name: str, src: Source) -> None:
    """A clean import: every listed file is in the workdir with the bundle's bytes, and every shard verifies."""
    bundle_manifest = src.manifest if name.endswith(".tar") else (case / name / share.MANIFEST).read_bytes()
    listed = [f for folder in json.loads(bundle_manifest)["folders"] for f in folder["files"]]
    original = {f["path"]: f["sha256"] for folder in json.loads(src.manifest)["folders"] for f in folder["files"]}
    for f in listed:
        data = (case / "work" / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"], f["path"]
        if name.endswith(".tar"):  # nothing but the original bytes may come out of a mutated tar
            assert f["sha256"] == original.get(f["path"]), f["path"]
        if f["path"].endswith(".h5"):
            assert check_payload(case / "work" / f["path"]) == [], f["path"]


def plan(rng: random.Random) -> list[str]:
    names = list(MUTATIONS)
    return rng.choices(names, weights=[MUTATIONS[n][1] for n in names], k=CASES)


def test_plan_covers_every_mutation():
    assert set(plan(random.Random(SEED))) == set(MUTATIONS)


def test_every_mutated_bundle_imports_cleanly_or_is_rejected_in_one_line_per_problem(built, tmp_path, monkeypatch,
                                                                                   capsys):
    src = Source(built)
    configure(tmp_path, tmp_path / "unused")
    rng = random.Random(SEED)
    outcomes = collections.Counter()
    as_command = set()
    for i, kind in enumerate(plan(rng)):
        case = tmp_path / f"case-{i:03d}"
        case.mkdir()
        monkeypatch.chdir(case)
        work = fresh_workdir(case)
        name = MUTATIONS[kind][0](rng, src, case)
        before = tree_digest(work)
        rc, err = import_in_process(name, capsys)
        if rc == 0:
            check_installed(case, name, src)
        else:
            check_rejection(name, rc, err, f"case {i} ({kind}): ")
            assert tree_digest(work) == before, f"case {i} ({kind}) changed the workdir:\n{err}"
            if kind not in as_command and len(as_command) < CLI_CASES:
                as_command.add(kind)
                assert import_as_command(name, case) == (rc, err), f"case {i} ({kind})"
                assert tree_digest(work) == before
        outcomes[kind, rc] += 1
        shutil.rmtree(case)
    mix = ", ".join(f"{kind}->{rc}: {n}" for (kind, rc), n in sorted(outcomes.items()))
    print(f"\nfuzz outcomes ({CASES} cases, seed {SEED}; 0 = clean import): {mix}")
    assert len(as_command) == CLI_CASES
    assert any(rc == 0 for _, rc in outcomes), "no mutation imported cleanly: the harness itself may be broken"
