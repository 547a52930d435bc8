"""Sharing precomputed datasets: export a stage's HDF5 outputs as a bundle, verify it, import it elsewhere.

    python -m pipeline.share export --benchmark SYN --stages ExtractFlow,DecodeTargetVideos --domain target \\
        --out flows-syn [--workdir W] [--with-upstream] [--sign KEYFILE]
    python -m pipeline.share verify flows-syn [--workdir W] [--no-expect-config] [--allowed-signers FILE]
    python -m pipeline.share import flows-syn [--workdir W] [--no-expect-config] [--allowed-signers FILE
                                              [--require-signature]]

A bundle is a directory (or an uncompressed .tar of one) that mirrors the workdir layout,
``<Stage>/<benchmark>/<key>/{shard-XXXX-of-YYYY.h5, shard-XXXX-of-YYYY.report.json, params.json}``, plus
``manifest.json`` (see manifest.py) and optionally ``manifest.json.sig`` (signing.py).

Import trusts nothing in the bundle, and writes nothing until all of it is checked: a .tar's member list and
manifest before a byte is extracted (tarball.py); the manifest's schema and every name (manifest.py,
names.py); every file against the manifest and every HDF5 file against the content policy (verify.py,
hdf5.py); the keys against the current luigi.cfg; the destination. Then every folder is installed, all or
nothing (install.py). docs/sharing.md states the trust model and lists every rejection. Every failure is a
BundleError with the exit code of its kind (errors.py); the command prints it as one line per problem.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.share.errors import BundleError, ImportStopped
from pipeline.share.export import export_bundle, select_tasks
from pipeline.share.files import copy_file as _copy_file  # the one copy of the import (hooked by tests)
from pipeline.share.install import install
from pipeline.share.manifest import BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, FolderPlan
from pipeline.share.names import MANIFEST, SIGNATURE
from pipeline.share.stages import SHAREABLE_STAGES
from pipeline.share.tarball import opened
from pipeline.share.verify import Bundle, verify_bundle


def verify(bundle, workdir=None, expect_config: bool = True, allowed_signers=None,
           require_signature: bool = False) -> Bundle:
    """verify_bundle for a directory or a .tar (named as given in every message)."""
    with opened(bundle, allowed_signers, require_signature) as (root, label, hashed, signature):
        return verify_bundle(root, workdir=workdir, expect_config=expect_config, label=label, hashed=hashed,
                             allowed_signers=allowed_signers, require_signature=require_signature,
                             signature=signature)


def import_bundle(bundle, workdir=None, expect_config: bool = True, allowed_signers=None,
                  require_signature: bool = False, verified: list | None = None) -> list[FolderPlan]:
    """Validate `bundle` (directory or .tar) completely, then install its folders into `workdir` (default:
    luigi.cfg's), all or nothing. Returns the folder plans (state new/partial/present). Raises BundleError,
    with the workdir as it was, when anything is wrong. `verified`, a list, receives the checked Bundle."""
    from pipeline.settings import workdir as configured_workdir

    target = Path(workdir).expanduser().resolve() if workdir is not None else configured_workdir()
    with opened(bundle, allowed_signers, require_signature) as (root, label, hashed, signature):
        checked = verify_bundle(root, workdir=target, expect_config=expect_config, label=label, hashed=hashed,
                                allowed_signers=allowed_signers, require_signature=require_signature,
                                signature=signature)
        if verified is not None:
            verified.append(checked)
        install(checked.root, target, checked.folders, label)
    return checked.folders


def main(argv=None) -> int:
    from pipeline.share.cli import main as cli_main

    return cli_main(argv)


__all__ = ["BUNDLE_FORMAT", "BUNDLE_FORMAT_VERSION", "MANIFEST", "SIGNATURE", "SHAREABLE_STAGES", "Bundle",
           "BundleError", "FolderPlan", "ImportStopped", "export_bundle", "import_bundle", "main", "select_tasks",
           "verify", "verify_bundle"]
