"""A .tar bundle is checked before a byte is extracted: member types and names, sizes against the manifest,
the archive's own integrity, the space it needs; messages name the tar as the user gave it."""
from __future__ import annotations

import gzip
import json
import tarfile
import tempfile

import pytest

from pipeline import share
from pipeline.share import errors, tarball
from tests.pipeline_helpers import reset_config
from tests.test_share_support import (built_bundles, fresh_destination, gnu_sparse_header, listing, padded, tar_members,
                                      write_tar)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return built_bundles(tmp_path_factory)


@pytest.fixture(autouse=True)
def _reset_config():
    yield
    reset_config()


@pytest.fixture
def no_extraction(monkeypatch):
    """Fails the test if anything creates the temporary extraction folder."""
    calls = []
    real = tempfile.TemporaryDirectory

    def spy(*a, **k):
        calls.append(a or k)
        return real(*a, **k)

    monkeypatch.setattr(tempfile, "TemporaryDirectory", spy)
    yield calls
    assert not calls, "the tar was extracted before it was rejected"


def manifest_bytes(built) -> bytes:
    return (built / "bundle" / share.MANIFEST).read_bytes()


def rejected(bundle, tmp_path, message, code=None):
    dest = fresh_destination(tmp_path)
    before = listing(dest)
    with pytest.raises(share.BundleError, match=message) as err:
        share.import_bundle(bundle)
    assert listing(dest) == before
    if code is not None:
        assert err.value.code == code
    return err.value


def test_a_gnu_sparse_member_is_rejected_before_anything_is_written(built, tmp_path, no_extraction):
    bad = tmp_path / "sparse.tar"
    m = tarfile.TarInfo(share.MANIFEST)
    m.size = len(manifest_bytes(built))
    bad.write_bytes(m.tobuf() + padded(manifest_bytes(built))
                    + gnu_sparse_header("ExtractFlow/big.json", 512, 64 << 20) + b"x" * 512 + b"\0" * 1024)
    rejected(bad, tmp_path, r"tar member 'ExtractFlow/big\.json' is a sparse file", errors.EXIT_UNSAFE)


def test_a_header_declaring_10_gib_without_data_is_a_message_not_a_traceback(built, tmp_path, no_extraction):
    bad = tmp_path / "huge.tar"
    m = tarfile.TarInfo(share.MANIFEST)
    m.size = len(manifest_bytes(built))
    huge = tarfile.TarInfo("ExtractFlow/huge.h5")
    huge.size = 10 << 30
    bad.write_bytes(m.tobuf() + padded(manifest_bytes(built)) + huge.tobuf())
    rejected(bad, tmp_path, r"tar member 'ExtractFlow/huge\.h5' declares 10737418240 bytes, but the archive ends "
                            r"at byte \d+ \(truncated\)", errors.EXIT_UNREADABLE)


def test_a_truncated_tar_is_a_message_not_a_traceback(built, tmp_path):
    data = (built / "bundle.tar").read_bytes()
    bad = tmp_path / "cut.tar"
    bad.write_bytes(data[: len(data) // 2 + 100])
    rejected(bad, tmp_path, r"truncated", errors.EXIT_UNREADABLE)


def test_a_gzip_compressed_tar_says_so(built, tmp_path, no_extraction):
    bad = tmp_path / "bundle.tar.gz"
    bad.write_bytes(gzip.compress((built / "bundle.tar").read_bytes()))
    err = rejected(bad, tmp_path, r"is a gzip-compressed file; a bundle \.tar is uncompressed", errors.EXIT_UNREADABLE)
    assert err.subject == str(bad)


def test_unlisted_members_are_rejected_without_extracting_anything(built, tmp_path, no_extraction):
    members = tar_members(built / "bundle.tar") + [(tarfile.TarInfo("ExtractFlow/extra.json"), b"{}" * 1000)]
    bad = write_tar(tmp_path / "extra.tar", members)
    rejected(bad, tmp_path, r"tar member 'ExtractFlow/extra\.json': not listed in the manifest", errors.EXIT_UNSAFE)


def test_a_member_whose_size_differs_from_the_manifest_is_rejected_before_extraction(built, tmp_path, no_extraction):
    members = [(m, d + b" " if d is not None and m.name.endswith(".report.json") else d)
               for m, d in tar_members(built / "bundle.tar")]
    bad = write_tar(tmp_path / "grown.tar", members)
    rejected(bad, tmp_path, r"tar member '.*\.report\.json' holds \d+ bytes, the manifest lists \d+",
             errors.EXIT_DAMAGED)


def test_a_tar_larger_than_the_free_space_is_rejected_before_extraction(built, tmp_path, monkeypatch, no_extraction):
    class Usage:
        total, used, free = 1 << 30, 1 << 30, 1 << 20

    monkeypatch.setattr(tarball.shutil, "disk_usage", lambda path: Usage)
    rejected(built / "bundle.tar", tmp_path, r"needs \d+ bytes to extract in .* which has 1048576 free",
             errors.EXIT_DESTINATION)


def test_a_manifest_declaring_huge_sizes_is_capped_by_the_free_space_check(built, tmp_path, no_extraction):
    manifest = json.loads(manifest_bytes(built))
    members = []
    for m, d in tar_members(built / "bundle.tar"):
        if m.name == share.MANIFEST:
            for folder in manifest["folders"]:
                folder["files"][0]["size"] = 1 << 60
            d = json.dumps(manifest).encode()
        members.append((m, d))
    bad = write_tar(tmp_path / "big.tar", members)
    rejected(bad, tmp_path, r"holds \d+ bytes, the manifest lists 1152921504606846976")


def test_messages_about_a_tar_name_the_tar_not_the_temporary_folder(built, tmp_path):
    members = []
    for m, d in tar_members(built / "bundle.tar"):
        if m.name == share.MANIFEST:
            manifest = json.loads(d)
            next(f for f in manifest["folders"][1]["files"] if f["path"].endswith(".h5"))["item_count"] = 7
            d = json.dumps(manifest).encode()
        members.append((m, d))
    bad = write_tar(tmp_path / "count.tar", members)
    err = rejected(bad, tmp_path, r"holds 6 items, the manifest says 7", errors.EXIT_DAMAGED)
    assert f"bundle {bad} rejected" in str(err) and "cfb-i2v-bundle-" not in str(err)


def test_a_too_long_member_name_is_reported_as_too_long(built, tmp_path, no_extraction):
    members = tar_members(built / "bundle.tar") + [(tarfile.TarInfo("ExtractFlow/" + "a" * 300 + ".json"), b"{}")]
    bad = write_tar(tmp_path / "long.tar", members)
    rejected(bad, tmp_path, r"has a name that is too long \(305 bytes; the limit is 255\)", errors.EXIT_UNSAFE)


def test_a_shuffled_tar_still_imports(built, tmp_path):
    members = tar_members(built / "bundle.tar")[::-1]  # the manifest last
    ok = write_tar(tmp_path / "reversed.tar", members)
    fresh_destination(tmp_path)
    folders = share.import_bundle(ok)
    assert {f.state for f in folders} == {"new"}
