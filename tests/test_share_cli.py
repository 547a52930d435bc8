"""`python -m pipeline.share`: every failure is one line per problem naming the bundle as the user typed it,
with an exit code per kind of failure, and never a traceback."""
from __future__ import annotations

import gzip
import shutil
import subprocess
import sys

import pytest

from pipeline import share
from pipeline.share import errors
from tests.pipeline_helpers import REPO, reset_config
from tests.test_share_support import built_bundles, configure, entry_of, load_manifest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return built_bundles(tmp_path_factory)


@pytest.fixture(autouse=True)
def _reset_config():
    yield
    reset_config()


def _gzip(built, tmp_path):
    (tmp_path / "b.tar").write_bytes(gzip.compress((built / "bundle.tar").read_bytes()))


def _truncated(built, tmp_path):
    data = (built / "bundle.tar").read_bytes()
    (tmp_path / "b.tar").write_bytes(data[: len(data) // 2])  # inside a member's data


def _pickle(built, tmp_path):
    shutil.copytree(built / "bundle", tmp_path / "b")
    (tmp_path / "b" / "ExtractFlow" / "model.pkl").write_bytes(b"\x80\x04K*.")


def _flipped(built, tmp_path):
    shutil.copytree(built / "bundle", tmp_path / "b")
    path = tmp_path / "b" / entry_of(load_manifest(tmp_path / "b"), "ExtractFlow", ".h5")["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _deep(built, tmp_path):
    shutil.copytree(built / "bundle", tmp_path / "b")
    (tmp_path / "b" / share.MANIFEST).write_text("{\"a\": " * 100_000 + "1" + "}" * 100_000)


def _conflict(built, tmp_path):
    shutil.copytree(built / "bundle", tmp_path / "b")
    report = entry_of(load_manifest(tmp_path / "b"), "ExtractFlow", ".report.json")["path"]
    (tmp_path / "work" / report).parent.mkdir(parents=True)
    (tmp_path / "work" / report).write_text("{}")


CASES = {  # how the bundle is broken -> (name typed, exit code, text of the first line, extra arguments)
    "gzip-compressed tar": (_gzip, "b.tar", errors.EXIT_UNREADABLE, "is a gzip-compressed file", []),
    "truncated tar": (_truncated, "b.tar", errors.EXIT_UNREADABLE, "truncated", []),
    "manifest nested 100,000 deep": (_deep, "b", errors.EXIT_UNREADABLE, "nests deeper than 32 levels", []),
    "pickle file": (_pickle, "b", errors.EXIT_UNSAFE, "ExtractFlow/model.pkl: file type not allowed", []),
    "flipped byte": (_flipped, "b", errors.EXIT_DAMAGED, "sha256 mismatch", []),
    "other parameters": (lambda built, tmp: shutil.copytree(built / "bundle", tmp / "b"), "b",
                         errors.EXIT_MISMATCH, "parameter mismatch", ["--short-side", "48"]),
    "unsigned, signature required": (lambda built, tmp: shutil.copytree(built / "bundle", tmp / "b"), "b",
                                     errors.EXIT_SIGNATURE, "is not signed",
                                     ["--require-signature", "--allowed-signers", "allowed"]),
    "conflict in the workdir": (_conflict, "b", errors.EXIT_DESTINATION, "conflict -- the workdir already holds", []),
}


SUBPROCESS = ("gzip-compressed tar", "manifest nested 100,000 deep")  # the command itself, as a user runs it


@pytest.mark.parametrize("case", list(CASES))
def test_each_failure_is_one_line_per_problem_with_its_own_exit_code(built, tmp_path, case, monkeypatch, capsys):
    make, name, code, text, extra = CASES[case]
    make(built, tmp_path)
    short_side = 48 if "--short-side" in extra else 64
    extra = [a for a in extra if a not in ("--short-side", "48")]
    (tmp_path / "allowed").write_text("")
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    before = sorted(p.relative_to(work).as_posix() for p in work.rglob("*"))
    configure(tmp_path, work, short_side)
    monkeypatch.chdir(tmp_path)  # the bundle is named as typed, relative to here
    if case in SUBPROCESS:
        env = {"PATH": "/usr/bin:/bin", "LUIGI_CONFIG_PATH": str(tmp_path / "luigi.cfg"), "PYTHONPATH": str(REPO),
               "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "pipeline.share", "import", name, *extra], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
        rc, err = proc.returncode, proc.stderr
    else:
        rc, err = share.main(["import", name, *extra]), capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == code, err
    assert "Traceback" not in err and lines, err
    assert all(line.startswith(f"error: {name}: ") for line in lines), err
    assert text in lines[0]
    assert lines[-1].endswith(f"exit {code}); the workdir was not changed")
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*")) == before


def test_the_exit_codes_are_distinct():
    codes = [errors.EXIT_UNREADABLE, errors.EXIT_UNSAFE, errors.EXIT_DAMAGED, errors.EXIT_MISMATCH,
             errors.EXIT_SIGNATURE, errors.EXIT_DESTINATION, errors.EXIT_INSTALL, errors.EXIT_EXPORT,
             errors.EXIT_INTERNAL]
    assert len(set(codes)) == len(codes) and not {0, 1, 2} & set(codes)


def test_an_unexpected_error_is_one_line_too(built, tmp_path, monkeypatch, capsys):
    configure(tmp_path, tmp_path / "work")
    monkeypatch.setattr(share, "verify", lambda *a, **k: {}["boom"])
    assert share.main(["verify", str(built / "bundle")]) == errors.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error KeyError" in err and str(built / "bundle") in err


def test_export_failures_name_the_output(built, tmp_path, capsys):
    configure(tmp_path, built / "work")
    (tmp_path / "taken").mkdir()
    assert share.main(["export", "--stages", "ExtractFlow", "--domain", "target", "--out",
                       str(tmp_path / "taken")]) == errors.EXIT_EXPORT
    assert f"error: {tmp_path / 'taken'}: it already exists" in capsys.readouterr().err
