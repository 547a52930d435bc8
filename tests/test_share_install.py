"""Installing is all or nothing across folders, names are ASCII only, copies never follow links, and a
manifest nested to any depth is a message."""
from __future__ import annotations

import errno
import os
import shutil

import pytest

from pipeline import share
from pipeline.share import errors
from pipeline.share.files import SourceFile, UnsafeFile, WrongSize
from tests.pipeline_helpers import reset_config
from tests.test_share_support import (built_bundles, copy_tree, entry_of, fresh_destination, listing, load_manifest,
                                      save_manifest, target_tasks)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return built_bundles(tmp_path_factory)


@pytest.fixture(autouse=True)
def _reset_config():
    yield
    reset_config()


def folders_of(built):
    """(DecodeTargetVideos folder, ExtractFlow folder), relative, in install order."""
    return tuple(f["path"] for f in load_manifest(built / "bundle")["folders"])


def hook_copy(monkeypatch, action):
    """Run `action(call number, dst)` before every file copy of the import."""
    real, calls = share._copy_file, []

    def hooked(src, dst):
        calls.append(dst)
        action(len(calls), dst)
        return real(src, dst)

    monkeypatch.setattr(share, "_copy_file", hooked)
    return calls


def test_a_file_where_a_stage_folder_belongs_stops_the_import_before_any_folder_is_installed(built, tmp_path):
    dest = fresh_destination(tmp_path)
    (dest / "ExtractFlow").write_text("not a folder")
    before = listing(dest)
    with pytest.raises(share.BundleError, match=r"ExtractFlow: exists and is not a folder") as err:
        share.import_bundle(built / "bundle")
    assert err.value.code == errors.EXIT_DESTINATION
    assert listing(dest) == before and not (dest / "DecodeTargetVideos").exists()


def test_a_path_blocked_during_the_install_rolls_back_the_folders_already_installed(built, tmp_path, monkeypatch):
    dest = fresh_destination(tmp_path)
    decode, flow = folders_of(built)

    def block(n, dst):
        if n == 1:  # while the first folder is staged, someone creates the second one's destination
            (dest / flow).mkdir(parents=True)
            (dest / flow / "theirs.txt").write_text("x")

    hook_copy(monkeypatch, block)
    with pytest.raises(share.ImportStopped, match=r"appeared during the import") as err:
        share.import_bundle(built / "bundle")
    assert err.value.code == errors.EXIT_INSTALL
    assert not (dest / decode.split("/")[0]).exists(), "the folder renamed into place first is rolled back"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == \
        sorted(["notes.txt", "ExtractFlow", "ExtractFlow/SYN", flow, f"{flow}/theirs.txt"])


def test_a_full_disk_during_the_install_leaves_the_workdir_as_it_was(built, tmp_path, monkeypatch):
    dest = fresh_destination(tmp_path)
    before = listing(dest)

    def disk_full(n, dst):
        if n == 4:  # the second folder's first file
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    calls = hook_copy(monkeypatch, disk_full)
    with pytest.raises(share.ImportStopped, match=r"No space left on device.*nothing was installed") as err:
        share.import_bundle(built / "bundle")
    assert len(calls) == 4 and err.value.code == errors.EXIT_INSTALL
    assert listing(dest) == before, "staged folders and the stage folders created for them are removed"
    assert not any(t.complete() for t in target_tasks())


def test_a_folder_partly_present_gets_its_files_back_all_or_nothing(built, tmp_path, monkeypatch):
    dest = fresh_destination(tmp_path)
    share.import_bundle(built / "bundle")
    for t in target_tasks():
        t.shard_file().unlink()
    before = files_and_folders(dest)

    def io_error(n, dst):
        if n == 2:
            raise OSError(errno.EIO, "Input/output error")

    hook_copy(monkeypatch, io_error)
    with pytest.raises(share.ImportStopped, match=r"Input/output error"):
        share.import_bundle(built / "bundle")
    assert files_and_folders(dest) == before  # a folder's mtime says a temporary file came and went


def files_and_folders(folder):
    return sorted((p.relative_to(folder).as_posix(), None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns))
                  for p in folder.rglob("*"))


def test_a_shard_named_with_non_ascii_digits_is_rejected(built, tmp_path):
    bundle = copy_tree(built / "bundle", tmp_path / "bundle")
    manifest = load_manifest(bundle)
    entry = entry_of(manifest, "ExtractFlow", ".h5")
    arabic = entry["path"].replace("shard-0000-of-0001", "shard-\u0660\u0660\u0660\u0660-of-\u0660\u0660\u0660\u0661")
    os.rename(bundle / entry["path"], bundle / arabic)
    entry["path"] = arabic
    save_manifest(bundle, manifest)
    dest = fresh_destination(tmp_path)
    before = listing(dest)
    with pytest.raises(share.BundleError, match=r"contains characters other than ASCII"):
        share.import_bundle(bundle)
    assert listing(dest) == before


def test_copies_do_not_follow_links_and_check_the_size_before_reading(tmp_path):
    (tmp_path / "b").mkdir()
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": 1}')
    (tmp_path / "b" / "link.json").symlink_to(secret)
    with pytest.raises(UnsafeFile, match="is a symbolic link"):
        share._copy_file(SourceFile(tmp_path / "b", "link.json", 13), tmp_path / "out1")
    assert not (tmp_path / "out1").exists()
    (tmp_path / "b" / "sub").symlink_to(tmp_path)  # a linked folder on the way is refused too
    with pytest.raises(UnsafeFile, match="symbolic link or not a folder"):
        share._copy_file(SourceFile(tmp_path / "b", "sub/secret.json", 13), tmp_path / "out2")
    (tmp_path / "b" / "big.json").write_bytes(b"{}" * 1000)
    with pytest.raises(WrongSize, match="size 2000 bytes, the manifest says 2"):
        share._copy_file(SourceFile(tmp_path / "b", "big.json", 2), tmp_path / "out3")
    assert not (tmp_path / "out3").exists()


def test_a_bundle_file_swapped_for_a_link_after_validation_is_not_read(built, tmp_path, monkeypatch):
    bundle = copy_tree(built / "bundle", tmp_path / "bundle")
    report = bundle / entry_of(load_manifest(bundle), "DecodeTargetVideos", ".report.json")["path"]
    outside = tmp_path / "outside.json"
    shutil.copy(report, outside)
    real_install = share.install

    def swap_then_install(*a, **k):
        report.unlink()
        report.symlink_to(outside)
        return real_install(*a, **k)

    monkeypatch.setattr(share, "install", swap_then_install)
    dest = fresh_destination(tmp_path)
    before = listing(dest)
    with pytest.raises(share.ImportStopped, match=r"is a symbolic link.*nothing was installed"):
        share.import_bundle(bundle)
    assert listing(dest) == before


def test_a_manifest_nested_100000_deep_is_a_message(built, tmp_path):
    bundle = copy_tree(built / "bundle", tmp_path / "bundle")
    (bundle / share.MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(share.BundleError, match=r"manifest\.json nests deeper than 32 levels") as err:
        share.verify(bundle)
    assert err.value.code == errors.EXIT_UNREADABLE
    (bundle / share.MANIFEST).write_text('{"format": "cfb-i2v-bundle", "format_version": 1, "folders": '
                                         + "[" * 40 + "]" * 40 + "}")
    with pytest.raises(share.BundleError, match=r"nests deeper than 32 levels"):
        share.verify(bundle)


def test_every_sharded_stage_is_in_the_registry_and_no_index_stage():
    import pipeline
    from pipeline.base import ShardedStage

    def subclasses(cls):
        return {c for s in cls.__subclasses__() for c in {s} | subclasses(s)}

    sharded = {c.__name__ for c in subclasses(ShardedStage) if c.__module__.startswith("pipeline.")}
    assert sharded == set(share.SHAREABLE_STAGES) == {"EstimateDepth", "SynthesizeSourceVideos",
                                                       "DecodeTargetVideos", "ExtractFlow"}
    assert "TargetIndex" not in share.SHAREABLE_STAGES and hasattr(pipeline, "TargetIndex")
