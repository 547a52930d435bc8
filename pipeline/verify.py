"""python -m pipeline.verify [ROOT] [--repair]: check every stage output of a workdir (or of a bundle folder)
against its checksums, and say how to regenerate what is damaged.

Every shard file (<Stage>/<benchmark>/<key>/shard-*.h5) is checked item by item with data.store.check_payload
(structure, Fletcher-32 and CRC-32 checksums), then against its folder (stage, benchmark, parameters, shard
count); training's bank snapshots (Train/<benchmark>/<key>/bank/*.h5) are checked for readability. One line is
printed per problem: the file, the stage, the item and what to do. The exit status is 1 when anything is wrong.

--repair renames each damaged shard file to <name>.damaged-<n> (kept for inspection, never read again), so the
stage's own command, printed for it, rebuilds exactly that shard and nothing else.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py

from data import store

SHARD_NAME = re.compile(r"shard-(\d{4})-of-(\d{4})\.h5$")
BUNDLE_MANIFEST = "manifest.json"  # a bundle folder's manifest (pipeline.share)


@dataclass
class Problem:
    path: Path          # the damaged file
    stage: str
    what: str           # one line: the item and what fails
    action: str         # how to regenerate it
    repairable: bool    # --repair may set the file aside (a shard of a workdir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.verify", description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=None,
                        help="a workdir or a bundle folder (default: the workdir of luigi.cfg)")
    parser.add_argument("--repair", action="store_true",
                        help="set each damaged shard file aside so its stage rebuilds it (prints the commands)")
    args = parser.parse_args(argv)
    if args.root is None:
        from pipeline.settings import workdir

        root = workdir()
    else:
        root = Path(args.root).expanduser().resolve()
    if not root.is_dir():
        print(f"verify: {root} is not a folder (give a workdir or a bundle folder; a .tar bundle is checked by "
              "`python -m pipeline.share verify`)", file=sys.stderr)
        return 2
    problems, checked = verify_root(root)
    for p in problems:
        print(f"{_rel(p.path, root)}: [{p.stage}] {p.what} -> {p.action}")
    kind = "bundle" if is_bundle(root) else "workdir"
    damaged = sorted({p.path for p in problems})
    print(f"verify: {checked} HDF5 files of the {kind} {root} checked: "
          + (f"{len(problems)} problem(s) in {len(damaged)} file(s)" if problems else "all intact"))
    if args.repair and problems:
        return _repair(problems, root, kind)
    return 1 if problems else 0


def is_bundle(root: Path) -> bool:
    return (root / BUNDLE_MANIFEST).is_file()


def verify_root(root: Path) -> tuple[list[Problem], int]:
    """(problems, number of HDF5 files checked) for a workdir or a bundle folder. Temporary files of writers
    (.<name>.tmp-*) and files set aside by --repair are not outputs and are not checked."""
    bundle = is_bundle(root)
    problems, checked = [], 0
    for path in sorted(root.rglob("*.h5")):
        rel = path.relative_to(root).parts
        if any(part.startswith(".") for part in rel) or not path.is_file():
            continue
        checked += 1
        if len(rel) == 4 and SHARD_NAME.match(rel[3]):
            problems.extend(_check_shard(path, root, bundle))
        elif len(rel) == 5 and rel[0] == "Train" and rel[3] == "bank":
            problems.extend(_check_bank_snapshot(path, root, bundle))
        else:
            stage = rel[0] if len(rel) > 1 else "?"
            problems.extend(Problem(path, stage, line, "not a file of the pipeline's layout: check where it "
                                    "came from", False) for line in store.check_payload(path))
    return problems, checked


# --- shard files -----------------------------------------------------------------------------------------------

def _check_shard(path: Path, root: Path, bundle: bool) -> list[Problem]:
    stage, benchmark, key = path.relative_to(root).parts[:3]
    shard, num_shards = (int(g) for g in SHARD_NAME.match(path.name).groups())
    material = _read_material(path.parent)
    action = _shard_action(path, root, stage, benchmark, key, shard, num_shards, material, bundle)
    lines = store.check_payload(path)
    if not lines:  # intact: safe to open here, and compare it with its folder
        lines = _folder_mismatches(path, stage, benchmark, num_shards, material)
    return [Problem(path, stage, line, action, not bundle) for line in lines]


def _read_material(folder: Path) -> dict | None:
    """params.json of a stage folder: what produced it (None when missing or unreadable)."""
    try:
        material = json.loads((folder / "params.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return material if isinstance(material, dict) else None


def _folder_mismatches(path: Path, stage: str, benchmark: str, num_shards: int, material: dict | None) -> list[str]:
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
    out = []
    for field, expected in (("stage", stage), ("benchmark", benchmark)):
        if str(attrs.get(field, "")) != expected:
            out.append(f"its {field} attribute is {str(attrs.get(field, ''))!r}, its folder says {expected!r}")
    if material is None:
        out.append("its folder has no readable params.json")
    else:
        if json.loads(attrs.get("params", "null")) != material.get("params"):
            out.append("its parameters differ from its folder's params.json")
        if material.get("num_shards") not in (None, num_shards):
            out.append(f"its name says {num_shards} shards, its folder's params.json {material.get('num_shards')}")
    return out


def stage_command(stage: str, benchmark: str, shard: int, num_shards: int, domain: str | None = None) -> str:
    """The command that (re)builds one shard of a stage."""
    extra = f" --domain {domain}" if domain else ""
    return (f"luigi --module pipeline {stage} --benchmark {benchmark}{extra} --shard {shard} "
            f"--num-shards {num_shards} --local-scheduler")


def _shard_action(path: Path, root: Path, stage: str, benchmark: str, key: str, shard: int, num_shards: int,
                  material: dict | None, bundle: bool) -> str:
    domain = ((material or {}).get("params") or {}).get("domain")
    command = stage_command(stage, benchmark, shard, num_shards, domain)
    if bundle:
        return (f"the bundle is damaged: do not import it; export it again from an intact workdir (there, "
                f"`{command}` rebuilds this shard)")
    current = _current_key(stage, benchmark, shard, num_shards, domain)
    if current is None or current == key:
        return f"run `python -m pipeline.verify {root} --repair` (or delete the file), then `{command}`"
    return (f"this folder is not what the current luigi.cfg gives {stage} (key {current}), so nothing reads it and "
            f"no rerun rewrites it: delete the folder {path.parent}, or set the settings in its params.json again "
            f"and delete the file, then `{command}`")


def _current_key(stage: str, benchmark: str, shard: int, num_shards: int, domain: str | None) -> str | None:
    """The folder key the current luigi.cfg gives this shard (None when it cannot be computed here)."""
    try:
        import pipeline

        cls = getattr(pipeline, stage)
        task = cls(benchmark=benchmark, shard=shard, num_shards=num_shards, **({"domain": domain} if domain else {}))
        return task.output_key()
    except Exception:  # noqa: BLE001 - an unknown stage, a dataset not configured here: give the plain command
        return None


# --- bank snapshots --------------------------------------------------------------------------------------------

def _check_bank_snapshot(path: Path, root: Path, bundle: bool) -> list[Problem]:
    """A bank snapshot is a record of one training epoch (nothing reads it to continue training): it is
    checked for structure and readability, and with its checksums where it carries them."""
    lines = store.check_hdf5(path)
    if not lines:
        return []
    run = path.parent.parent
    material = _read_material(run) or {}
    config = (material.get("params") or {}).get("config") or {}
    command = "luigi --module pipeline Train --benchmark " + str(material.get("benchmark", run.parent.name))
    if "variant" in config:
        command += f" --variant {config['variant']} --seed {config.get('seed', 0)}"
    action = (f"only a whole training run rewrites it: delete the run folder {run} and run `{command} "
              "--local-scheduler` (and the Evaluate / RunBenchmark outputs that used it, to recompute them)")
    if bundle:
        action = "the bundle is damaged: export it again from an intact workdir"
    return [Problem(path, "Train", line, action, False) for line in lines]


# --- repair ----------------------------------------------------------------------------------------------------

def _repair(problems: list[Problem], root: Path, kind: str) -> int:
    if kind == "bundle":
        print("verify: a bundle is not repaired in place: export it again from an intact workdir", file=sys.stderr)
        return 1
    commands = []
    for path in sorted({p.path for p in problems if p.repairable}):
        aside = _aside_name(path)
        path.rename(aside)
        print(f"repair: {_rel(path, root)} set aside as {aside.name}")
        action = next(p.action for p in problems if p.path == path)
        commands += [c for c in re.findall(r"`(luigi [^`]+)`", action) if c not in commands]
    left = sorted({p.path for p in problems if not p.repairable})
    for path in left:
        print(f"repair: {_rel(path, root)} is not set aside (see its line above for what to do)")
    if commands:
        print("verify: now rebuild the shards set aside (only those are redone):")
        for c in commands:
            print(f"  {c}")
    return 1


def _aside_name(path: Path) -> Path:
    n = 1
    while (aside := path.with_name(f"{path.name}.damaged-{n}")).exists():
        n += 1
    return aside


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    raise SystemExit(main())
