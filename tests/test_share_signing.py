"""Optional signatures: `export --sign KEY` signs the manifest with ssh-keygen; verify and import check it
against an allowed-signers file and say who signed; `--require-signature` refuses anything else."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from pipeline import share
from pipeline.share import errors
from pipeline.share.signing import NAMESPACE
from tests.conftest import require
from tests.pipeline_helpers import reset_config
from tests.test_share_support import built_bundles, configure, fresh_destination, listing, target_tasks


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return built_bundles(tmp_path_factory)


@pytest.fixture(autouse=True)
def _reset_config():
    yield
    reset_config()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two ed25519 keys made here (alice@lab, mallory@elsewhere) and an allowed-signers file naming alice."""
    require(shutil.which("ssh-keygen") and __import__("pathlib").Path(shutil.which("ssh-keygen")),
            "ssh-keygen (OpenSSH client)")
    root = tmp_path_factory.mktemp("keys")
    for who in ("alice@lab", "mallory@elsewhere"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", who, "-f", str(root / who)], check=True)
    pub = (root / "alice@lab.pub").read_text().split()
    (root / "allowed_signers").write_text(f'alice@lab namespaces="{NAMESPACE}" {pub[0]} {pub[1]}\n')
    return root


@pytest.fixture(scope="module")
def signed(built, keys, tmp_path_factory):
    """The built workdir exported again, signed by alice, as a folder and a .tar."""
    root = tmp_path_factory.mktemp("signed")
    configure(root, built / "work")
    try:
        assert share.main(["export", "--stages", "ExtractFlow,DecodeTargetVideos", "--domain", "target",
                           "--out", str(root / "bundle"), "--sign", str(keys / "alice@lab")]) == 0
        share.export_bundle(target_tasks(), root / "bundle.tar", sign_key=keys / "alice@lab")
    finally:
        reset_config()
    return root


def test_a_signed_bundle_verifies_and_imports_and_says_who_signed(signed, keys, tmp_path, capsys):
    assert (signed / "bundle" / share.SIGNATURE).is_file()
    for bundle in (signed / "bundle", signed / "bundle.tar"):
        dest = tmp_path / f"dest-{bundle.name}"
        configure(tmp_path, dest)
        assert share.main(["import", str(bundle), "--workdir", str(dest), "--allowed-signers",
                           str(keys / "allowed_signers"), "--require-signature"]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert "signed by alice@lab with ED25519 key SHA256:" in out
        assert all(t.complete() for t in target_tasks())


def test_an_unsigned_bundle_is_rejected_when_a_signature_is_required(built, keys, tmp_path):
    dest = fresh_destination(tmp_path)
    before = listing(dest)
    for bundle in (built / "bundle", built / "bundle.tar"):
        with pytest.raises(share.BundleError, match=r"is not signed .* and a signature is required") as err:
            share.import_bundle(bundle, allowed_signers=keys / "allowed_signers", require_signature=True)
        assert err.value.code == errors.EXIT_SIGNATURE
    assert listing(dest) == before
    assert share.verify(built / "bundle").signature == "not signed"


def test_a_manifest_edited_after_signing_is_rejected(signed, keys, tmp_path):
    bundle = shutil.copytree(signed / "bundle", tmp_path / "bundle")
    manifest = json.loads((bundle / share.MANIFEST).read_text())
    manifest["created"] = "1999-01-01T00:00:00Z"  # anything: the checksums still match the files
    (bundle / share.MANIFEST).write_text(json.dumps(manifest))
    dest = fresh_destination(tmp_path)
    before = listing(dest)
    with pytest.raises(share.BundleError, match=r"does not verify for alice@lab") as err:
        share.import_bundle(bundle, allowed_signers=keys / "allowed_signers")  # a bad signature fails anyway
    assert err.value.code == errors.EXIT_SIGNATURE and listing(dest) == before


def test_a_bundle_signed_by_a_key_not_allowed_is_rejected(built, keys, tmp_path):
    configure(tmp_path, built / "work")
    share.export_bundle(target_tasks(), tmp_path / "theirs", sign_key=keys / "mallory@elsewhere")
    fresh_destination(tmp_path)
    with pytest.raises(share.BundleError, match=r"not a valid signature by any key in .*allowed_signers"):
        share.import_bundle(tmp_path / "theirs", allowed_signers=keys / "allowed_signers", require_signature=True)


def test_require_signature_without_allowed_signers_is_a_message(signed, capsys):
    assert share.main(["verify", str(signed / "bundle"), "--require-signature"]) == errors.EXIT_SIGNATURE
    assert "no allowed-signers file was given" in capsys.readouterr().err
