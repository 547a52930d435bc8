"""The command line: `python -m pipeline.share export|verify|import`. Every failure is printed as one line
per problem, `error: <bundle as given>: <what is wrong>`, and the exit code says its kind (errors.py);
nothing ends in a traceback."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.share.errors import EXIT_INTERNAL, EXIT_NAMES, BundleError


def _use_workdir(workdir) -> None:
    if workdir:
        from luigi.configuration import get_config

        cfg = get_config()
        if not cfg.has_section("paths"):
            cfg.add_section("paths")
        cfg.set("paths", "workdir", str(Path(workdir).expanduser().resolve()))


def _summary(folders, copied: bool) -> str:
    lines = []
    for plan in folders:
        items = sum(f["item_count"] for f in plan.shards)
        state = {"new": "copied" if copied else "new here", "partial": "missing files added" if copied
                 else "some files already here", "present": "already in the workdir"}[plan.state]
        lines.append(f"  {plan.rel}: {len(plan.shards)} shard(s), {items} items ({state})")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.share",
                                description="Share precomputed stage outputs between workdirs (docs/sharing.md).")
    sub = p.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write a bundle of stages' HDF5 outputs with a manifest")
    ex.add_argument("--benchmark", default="SYN")
    ex.add_argument("--stages", required=True,
                    help="comma-separated sharded stages, e.g. ExtractFlow,DecodeTargetVideos")
    ex.add_argument("--domain", default="both", choices=["source", "target", "both"],
                    help="for stages with a domain (ExtractFlow); default both")
    ex.add_argument("--with-upstream", action="store_true", help="also export the sharded stages they read")
    ex.add_argument("--out", required=True, help="new bundle directory (or NAME.tar)")
    ex.add_argument("--workdir", help="workdir to read (default: [paths] workdir of luigi.cfg)")
    ex.add_argument("--sign", metavar="KEYFILE", help="sign the manifest with this SSH private key")
    for name, text in (("import", "validate a bundle and copy it into the workdir"),
                       ("verify", "validate a bundle only (nothing is written)")):
        c = sub.add_parser(name, help=text)
        c.add_argument("bundle")
        c.add_argument("--workdir", help="destination workdir (default: [paths] workdir of luigi.cfg)")
        c.add_argument("--expect-config", dest="expect_config", action="store_true", default=True,
                       help="require that the current luigi.cfg gives the bundle's keys (default)")
        c.add_argument("--no-expect-config", dest="expect_config", action="store_false",
                       help="check only the bundle's own consistency")
        c.add_argument("--allowed-signers", metavar="FILE",
                       help="ssh-keygen allowed-signers file: a signed bundle must verify against it")
        c.add_argument("--require-signature", action="store_true",
                       help="reject bundles that are not signed by a key in --allowed-signers")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    subject = args.out if args.command == "export" else args.bundle
    try:
        return _run(args)
    except BundleError as e:
        for line in e.lines():
            print(f"error: {line}", file=sys.stderr)
        what = EXIT_NAMES.get(e.code, "error")
        tail = "; the workdir was not changed" if args.command == "import" else ""
        print(f"error: {e.subject or subject}: {args.command} failed ({what}, exit {e.code}){tail}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"error: {subject}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not the user's input: still one line, with what to report
        print(f"error: {subject}: internal error {type(e).__name__}: {' '.join(str(e).split())[:300]} "
              "(please report it)", file=sys.stderr)
        return EXIT_INTERNAL


def _run(args) -> int:
    from pipeline import share

    _use_workdir(args.workdir)
    from pipeline.settings import workdir

    if args.command == "export":
        domains = None if args.domain == "both" else [args.domain]
        tasks = share.select_tasks(args.benchmark, args.stages, domains, args.with_upstream)
        manifest = share.export_bundle(tasks, args.out, sign_key=args.sign)
        n = sum(len(e["files"]) for e in manifest["folders"])
        signed = ", manifest signed" if args.sign else ""
        print(f"exported {len(manifest['folders'])} folder(s), {n} files to {args.out}{signed}")
    elif args.command == "verify":
        checked = share.verify(args.bundle, workdir=workdir(), expect_config=args.expect_config,
                               allowed_signers=args.allowed_signers, require_signature=args.require_signature)
        print(f"bundle {args.bundle} is valid ({checked.signature}):\n{_summary(checked.folders, False)}")
    else:
        verified = []
        folders = share.import_bundle(args.bundle, expect_config=args.expect_config,
                                      allowed_signers=args.allowed_signers,
                                      require_signature=args.require_signature, verified=verified)
        print(f"imported {args.bundle} into {workdir()} ({verified[0].signature}):\n{_summary(folders, True)}")
    return 0
