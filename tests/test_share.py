"""Sharing precomputed datasets (pipeline.share): a bundle exported from one workdir imports into another,
where Luigi sees the stages as done; a damaged, unsafe or mismatched bundle is rejected with a message that
says what is wrong, and the destination workdir is left untouched."""
from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import h5py
import pytest

from data.store import StoreReader
from pipeline import share
from pipeline.share.errors import EXIT_UNSAFE
from tests.pipeline_helpers import REPO, build, reset_config
from tests.test_share_support import (CONFIG, STAGES, built_bundles, configure, copy_bundle, entry_of,
                                      fresh_destination, listing, load_manifest, rehash, save_manifest, target_tasks)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny SYN workdir with DecodeTargetVideos and ExtractFlow (target) built, and its bundle."""
    return built_bundles(tmp_path_factory)


@pytest.fixture(autouse=True)
def _reset_config():
    yield
    reset_config()


# --- the round trip --------------------------------------------------------------------------------------

def test_an_imported_bundle_makes_the_stages_complete_with_identical_files(exported, tmp_path):
    dest = fresh_destination(tmp_path)
    tasks = target_tasks()
    assert not any(t.complete() for t in tasks)

    folders = share.import_bundle(exported / "bundle")

    assert {f.state for f in folders} == {"new"}
    assert all(t.complete() for t in tasks)
    for t in tasks:
        rel = t.output_dir().relative_to(dest)
        for name in ("params.json", t.shard_file().name, t.report_file().name):
            assert filecmp.cmp(exported / "work" / rel / name, dest / rel / name, shallow=False)
        assert StoreReader(t.shard_file()).ids == StoreReader(exported / "work" / rel / t.shard_file().name).ids
    # Luigi has nothing to run: not even the SYN generation or the index upstream of the imported stages.
    assert build(tasks)
    assert not (dest / "GenerateSyn").exists() and not (dest / "TargetIndex").exists()
    assert not list(dest.rglob(".*tmp-*"))


def test_importing_the_same_bundle_again_changes_nothing(exported, tmp_path):
    dest = fresh_destination(tmp_path)
    share.import_bundle(exported / "bundle")
    before = listing(dest)
    folders = share.import_bundle(exported / "bundle")
    assert {f.state for f in folders} == {"present"}
    assert listing(dest) == before


def test_a_folder_missing_a_file_gets_only_that_file(exported, tmp_path):
    fresh_destination(tmp_path)
    share.import_bundle(exported / "bundle")
    shard = target_tasks()[0].shard_file()
    shard.unlink()
    folders = share.import_bundle(exported / "bundle")
    assert sorted(f.state for f in folders) == ["partial", "present"]
    assert all(t.complete() for t in target_tasks())


def test_the_manifest_records_stage_parameters_versions_counts_and_checksums(exported):
    bundle = exported / "bundle"
    manifest = load_manifest(bundle)
    assert manifest["format"] == share.BUNDLE_FORMAT and manifest["format_version"] == share.BUNDLE_FORMAT_VERSION
    assert manifest["created"] and "h5py" in manifest["versions"] and "opencv" in manifest["versions"]
    stages = {f["stage"]: f for f in manifest["folders"]}
    assert set(stages) == {"ExtractFlow", "DecodeTargetVideos"}
    assert stages["DecodeTargetVideos"]["key_material"]["params"] == {"frame_short_side": 64}
    assert stages["ExtractFlow"]["key_material"]["params"]["domain"] == "target"
    assert [c["stage"] for c in stages["ExtractFlow"]["upstream_chain"]][:1] == ["DecodeTargetVideos"]
    for folder in manifest["folders"]:
        for f in folder["files"]:
            data = (bundle / f["path"]).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (f["size"], f["sha256"])
            if f["path"].endswith(".h5"):
                assert f["item_count"] == 6 and f["complete"] is True
    # only JSON and HDF5 (no pickle), nothing unlisted
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert {Path(p).suffix for p in files} == {".json", ".h5"}
    assert files == {f["path"] for folder in manifest["folders"] for f in folder["files"]} | {share.MANIFEST}


def test_export_refuses_incomplete_shards_and_says_which(exported, tmp_path):
    configure(tmp_path, exported / "work")
    tasks = share.select_tasks("SYN", "ExtractFlow", ["source"])  # never built
    with pytest.raises(share.BundleError, match=r"ExtractFlow\[SYN --domain source\] shard 1/2: .* is missing"):
        share.export_bundle(tasks, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_refuses_stages_that_are_not_sharded_stores(exported, tmp_path):
    configure(tmp_path, exported / "work")
    with pytest.raises(share.BundleError, match="'TargetIndex' is not a sharded HDF5 stage"):
        share.select_tasks("SYN", "TargetIndex")


# --- rejections -----------------------------------------------------------------------------------------

def _flip_byte(bundle, m):
    path = bundle / entry_of(m, "ExtractFlow", ".h5")["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(bundle, m):
    path = bundle / entry_of(m, "ExtractFlow", ".h5")["path"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _truncate_and_rehash(bundle, m):
    _truncate(bundle, m)
    rehash(bundle, entry_of(m, "ExtractFlow", ".h5"))


def _dotdot_path(bundle, m):
    entry_of(m, "DecodeTargetVideos", ".report.json")["path"] = "../x.json"


def _dotdot_inside(bundle, m):
    e = entry_of(m, "DecodeTargetVideos", ".report.json")
    e["path"] = e["path"].rsplit("/", 1)[0] + "/../../../../x.json"


def _absolute_path(bundle, m):
    entry_of(m, "DecodeTargetVideos", "params.json")["path"] = "/etc/passwd"


def _dotdot_folder(bundle, m):
    m["folders"][0]["path"] = "../" + m["folders"][0]["path"]


def _symlinked_file(bundle, m):
    path = bundle / entry_of(m, "DecodeTargetVideos", ".report.json")["path"]
    outside = bundle.parent / "outside.json"
    shutil.copy(path, outside)
    path.unlink()
    path.symlink_to(outside)


def _symlinked_folder(bundle, m):
    (bundle / "ExtractFlow" / "SYN" / "elsewhere").symlink_to(bundle.parent)


def _pickle_file(bundle, m):
    (bundle / "DecodeTargetVideos" / "model.pkl").write_bytes(b"\x80\x04K*.")


def _listed_pickle(bundle, m):
    folder = m["folders"][0]
    path = folder["path"] + "/data.pkl"
    (bundle / path).write_bytes(b"\x80\x04K*.")
    entry = {"path": path}
    rehash(bundle, entry)
    folder["files"].append(entry)


def _unlisted_json(bundle, m):
    (bundle / m["folders"][0]["path"] / "extra.json").write_text("{}")


def _missing_file(bundle, m):
    (bundle / entry_of(m, "ExtractFlow", ".report.json")["path"]).unlink()


def _edited_parameters(bundle, m):
    folder = next(f for f in m["folders"] if f["stage"] == "DecodeTargetVideos")
    folder["key_material"]["params"]["frame_short_side"] = 48
    params = bundle / folder["path"] / "params.json"
    params.write_text(json.dumps(folder["key_material"]))
    rehash(bundle, entry_of(m, "DecodeTargetVideos", "params.json"))


def _wrong_item_count(bundle, m):
    entry_of(m, "ExtractFlow", ".h5")["item_count"] = 7


def _future_format(bundle, m):
    m["format_version"] = 99


def _external_link(bundle, m):
    entry = entry_of(m, "ExtractFlow", ".h5")
    with h5py.File(bundle / entry["path"], "a") as f:
        f["items/leak"] = h5py.ExternalLink("/etc/passwd", "/")
    rehash(bundle, entry)


REJECTIONS = {
    "tampered byte": (_flip_byte, r"shard-0000-of-0001\.h5: sha256 mismatch"),
    "truncated file": (_truncate, r"shard-0000-of-0001\.h5: size \d+ bytes, the manifest says \d+ \(truncated"),
    "truncated file with a rewritten manifest": (_truncate_and_rehash, r"not a complete HDF5 store file"),
    "manifest path ../x": (_dotdot_path, r"file path '\.\./x\.json' escapes the bundle"),
    "manifest path with .. inside": (_dotdot_inside, r"escapes the bundle"),
    "absolute manifest path": (_absolute_path, r"file path '/etc/passwd' is an absolute path"),
    "folder path ../": (_dotdot_folder, r"folder path '\.\./DecodeTargetVideos/SYN/\w+' escapes the bundle"),
    "symlinked file": (_symlinked_file, r"shard-0000-of-0001\.report\.json: is a symbolic link"),
    "symlinked folder": (_symlinked_folder, r"ExtractFlow/SYN/elsewhere: is a symbolic link"),
    "pickle file": (_pickle_file, r"DecodeTargetVideos/model\.pkl: file type not allowed .* only JSON and HDF5"),
    "pickle listed in the manifest": (_listed_pickle, r"data\.pkl: file type not allowed"),
    "unlisted file": (_unlisted_json, r"extra\.json: not listed in the manifest"),
    "missing file": (_missing_file, r"report\.json: listed in the manifest but missing"),
    "edited parameters": (_edited_parameters, r"the key \w+ is not the hash of the recorded key material"),
    "wrong item count": (_wrong_item_count, r"holds 6 items, the manifest says 7"),
    "future bundle format": (_future_format, r"bundle format version 99 is not supported"),
    "HDF5 external link": (_external_link, r"HDF5 ExternalLink at /items/leak is not allowed"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_a_bad_bundle_is_rejected_with_a_clear_message_and_the_workdir_untouched(exported, tmp_path, case):
    tamper, message = REJECTIONS[case]
    bundle = copy_bundle(exported, tmp_path)
    manifest = load_manifest(bundle)
    tamper(bundle, manifest)
    save_manifest(bundle, manifest)
    dest = fresh_destination(tmp_path)
    before = listing(dest)
    with pytest.raises(share.BundleError, match=message):
        share.import_bundle(bundle)
    assert listing(dest) == before
    assert not (tmp_path / "x.json").exists()


def test_a_bundle_made_with_other_parameters_is_rejected_naming_them(exported, tmp_path):
    dest = fresh_destination(tmp_path)
    configure(tmp_path, dest, short_side=48)
    before = listing(dest)
    with pytest.raises(share.BundleError) as err:
        share.import_bundle(exported / "bundle")
    text = str(err.value)
    assert "DecodeTargetVideos/SYN/" in text and "parameter mismatch" in text
    assert "params.frame_short_side: bundle 64, this configuration 48" in text
    assert "upstream DecodeTargetVideos: params.frame_short_side: bundle 64, this configuration 48" in text
    assert listing(dest) == before


def test_a_conflicting_file_in_the_workdir_is_an_error_and_nothing_is_copied(exported, tmp_path):
    dest = fresh_destination(tmp_path)
    share.import_bundle(exported / "bundle")
    flow = next(t for t in target_tasks() if t.stage_name == "ExtractFlow")
    flow.report_file().write_text('{"edited": true}')
    flow.shard_file().unlink()
    before = listing(dest)
    with pytest.raises(share.BundleError, match=r"report\.json: conflict -- the workdir already holds a different"):
        share.import_bundle(exported / "bundle")
    assert listing(dest) == before


# --- tar bundles ----------------------------------------------------------------------------------------

def test_a_tar_bundle_round_trips(exported, tmp_path):
    configure(tmp_path, exported / "work")
    share.export_bundle(target_tasks(), tmp_path / "bundle.tar")
    with tarfile.open(tmp_path / "bundle.tar") as tar:
        assert all(m.isreg() for m in tar.getmembers())
    fresh_destination(tmp_path)
    share.import_bundle(tmp_path / "bundle.tar")
    assert all(t.complete() for t in target_tasks())


@pytest.mark.parametrize("member, message", [
    (tarfile.TarInfo("../evil.json"), r"tar member '\.\./evil\.json' escapes the bundle"),
    (tarfile.TarInfo("/tmp/evil.json"), r"tar member '/tmp/evil\.json' is an absolute path"),
    ("symlink", r"tar member 'ExtractFlow/link\.json' is a link or special file"),
])
def test_a_tar_with_an_unsafe_member_is_rejected(exported, tmp_path, member, message):
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        tar.add(exported / "bundle" / share.MANIFEST, arcname=share.MANIFEST)
        if member == "symlink":
            member = tarfile.TarInfo("ExtractFlow/link.json")
            member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(member)
        else:
            member.size = 2
            tar.addfile(member, __import__("io").BytesIO(b"{}"))
    dest = fresh_destination(tmp_path)
    before = listing(dest)
    with pytest.raises(share.BundleError, match=message):
        share.import_bundle(bad)
    assert listing(dest) == before and not (tmp_path / "evil.json").exists()


# --- the command line -----------------------------------------------------------------------------------

def test_the_command_line_exports_verifies_and_imports(exported, tmp_path, capsys):
    configure(tmp_path, exported / "work")
    out = tmp_path / "cli-bundle"
    assert share.main(["export", "--benchmark", "SYN", "--stages", STAGES, "--domain", "target",
                       "--out", str(out)]) == 0
    assert "exported 2 folder(s)" in capsys.readouterr().out
    dest = tmp_path / "cli-dest"
    assert share.main(["import", str(out), "--workdir", str(dest)]) == 0
    assert "ExtractFlow/SYN/" in capsys.readouterr().out
    assert all(t.complete() for t in target_tasks())  # --workdir made the tasks look there

    (out / "DecodeTargetVideos" / "x.pkl").write_bytes(b"\x80\x04.")
    assert share.main(["import", str(out), "--workdir", str(tmp_path / "other")]) == EXIT_UNSAFE
    err = capsys.readouterr().err
    assert "x.pkl: file type not allowed" in err and "the workdir was not changed" in err
    assert not (tmp_path / "other").exists()


def test_python_m_pipeline_share_verify_runs(exported, tmp_path):
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text(CONFIG.format(workdir=tmp_path / "none", short_side=64))
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(cfg)}
    proc = subprocess.run([sys.executable, "-m", "pipeline.share", "verify", str(exported / "bundle")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "is valid" in proc.stdout and "6 items" in proc.stdout
    assert not (tmp_path / "none").exists()
