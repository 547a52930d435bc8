"""Per-item checksums on a tiny SYN workdir: one payload byte flipped in the output of each stage (depth, synthesis,
decoding, source and target flow) and in a bank snapshot; `python -m pipeline.verify` names the file, the stage
and the item; --repair and the commands it prints rebuild exactly the damaged shards, the same as before, and
every other file is left as it was (bytes and mtime)."""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from data.store import DamagedItemError
from tests.pipeline_helpers import (assert_same_store, build, reset_config, subprocess_env, tiny_syn_config,
                                    use_config)

# (stage, shard, extra luigi arguments, the dataset of the first item that gets the flipped byte, and what
# verify says of it): an encoded frame or flow (bytes in HDF5's global heap, CRC-32) or inverse depth (a chunk,
# Fletcher-32)
VICTIMS = [("EstimateDepth", 0, (), "inverse_depth", "inverse_depth fails its checksum or cannot be read (OSError"),
           ("SynthesizeSourceVideos", 1, (), "frames", "frames[1] fails the CRC-32 checksum -> "),
           ("DecodeTargetVideos", 0, (), "frames", "frames[1] fails the CRC-32 checksum -> "),
           ("ExtractFlow", 1, ("--domain", "source"), "flow", "flow[1] fails the CRC-32 checksum -> "),
           ("ExtractFlow", 0, ("--domain", "target"), "flow", "flow[1] fails the CRC-32 checksum -> ")]


@pytest.fixture(scope="module")
def config_text():
    return lambda workdir: tiny_syn_config(workdir, source_shards=2, target_shards=2)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, config_text):
    """Every data stage of a tiny SYN, run once in this process (12 stills, 6 videos, 2 + 2 shards), and a
    copy of it as it was (the reference). The repair test works in the workdir itself: in a copy the index
    stages would list the dataset again, since it lies in another folder."""
    tmp = tmp_path_factory.mktemp("checksums")
    workdir = tmp / "clean"
    use_config(tmp / "luigi.cfg", config_text(workdir))
    try:
        from pipeline import PrepareData

        assert build([PrepareData(benchmark="SYN")])
    finally:
        reset_config()
    return workdir, _copy(workdir, tmp / "reference")


def _copy(clean: Path, dst: Path) -> Path:
    shutil.copytree(clean, dst, symlinks=True)
    return dst


def _shard(workdir: Path, stage: str, shard: int, extra=()) -> Path:
    for folder in (workdir / stage / "SYN").iterdir():
        domain = ("--domain", '"domain": "' + extra[1] + '"') if extra else None
        if domain is None or domain[1] in (folder / "params.json").read_text():
            return folder / f"shard-{shard:04d}-of-0002.h5"
    raise AssertionError(f"no {stage} {extra} folder")


def _flip_element(path: Path, dataset: str, index: int = 1) -> str:
    """Flip one byte in the middle of element `index` of items/0000000/<dataset> (an encoded frame or flow,
    found in the file: its bytes in HDF5's global heap) or of its chunk (a fixed-size array); return the id."""
    with h5py.File(path, "r") as f:
        ds = f[f"items/0000000/{dataset}"]
        if ds.dtype.kind == "O":
            payload = ds[index].tobytes()
        else:
            chunk = ds.id.get_chunk_info(0)
        item_id = f["ids"][0].decode()
    data = bytearray(path.read_bytes())
    if ds.dtype.kind == "O":
        at = data.find(payload)
        assert at >= 0 and data.find(payload, at + 1) < 0
        data[at + len(payload) // 2] ^= 0x01
    else:
        data[chunk.byte_offset + chunk.size // 2] ^= 0x01
    with open(path, "r+b") as fh:  # in place, as a bit flip on disk would be: same file, same size
        fh.write(data)
    return item_id


def _state(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _verify(workdir: Path, cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.verify", str(workdir), *args], env=subprocess_env(cfg),
                          capture_output=True, text=True, timeout=300)


def test_a_flipped_byte_in_a_bank_snapshot_is_named_with_the_run_to_redo(tmp_path, config_text):
    from model.memory_bank import FlowMemoryBank, write_bank_snapshot

    work = tmp_path / "work"
    run = work / "Train" / "SYN" / "0123456789ab"
    bank = FlowMemoryBank(2, 2, "random")
    bank.refresh(np.array([0, 1, 1, 0]), np.array([0.9, 0.8, 0.7, 0.6], np.float32))
    snapshot = run / "bank" / "epoch_001.h5"
    write_bank_snapshot(snapshot, bank.snapshot(["t/a.avi", "t/b.avi", "t/c.avi", "t/d.avi"]), {"epoch": 1})
    (run / "params.json").write_text('{"benchmark": "SYN", "params": {"config": {"variant": "FULL", "seed": 2}}}')
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text(config_text(work))
    assert _verify(work, cfg).returncode == 0

    with h5py.File(snapshot, "r") as f:
        chunk = f["confidences"].id.get_chunk_info(0)
    with open(snapshot, "r+b") as fh:
        fh.seek(chunk.byte_offset + 5)
        byte = fh.read(1)
        fh.seek(chunk.byte_offset + 5)
        fh.write(bytes([byte[0] ^ 0x01]))
    proc = _verify(work, cfg)
    assert proc.returncode == 1
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("Train/")]
    assert line.startswith("Train/SYN/0123456789ab/bank/epoch_001.h5: [Train] confidences fails its checksum")
    assert (f"delete the run folder {run} and run `luigi --module pipeline Train --benchmark SYN --variant FULL "
            "--seed 2 --local-scheduler`") in line


def test_verify_checks_a_bundle_folder_and_does_not_repair_it(clean, tmp_path, config_text):
    """A bundle folder (manifest.json beside the stage folders, as pipeline.share writes it) is checked the same
    way; a damaged shard is reported for export again, and --repair leaves the bundle as it is."""
    bundle = tmp_path / "bundle"
    folder = _shard(clean[1], "DecodeTargetVideos", 0).parent
    shutil.copytree(folder, bundle / folder.relative_to(clean[1]))
    (bundle / "manifest.json").write_text("{}")
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text(config_text(tmp_path / "work"))
    ok = _verify(bundle, cfg)
    assert ok.returncode == 0 and "2 HDF5 files of the bundle" in ok.stdout, ok.stdout
    path = bundle / folder.relative_to(clean[1]) / "shard-0001-of-0002.h5"
    item_id = _flip_element(path, "frames")
    before = _state(bundle)
    for args in ((), ("--repair",)):
        proc = _verify(bundle, cfg, *args)
        assert proc.returncode == 1
        (line,) = [line for line in proc.stdout.splitlines() if line.startswith("DecodeTargetVideos/")]
        assert line.startswith(f"{path.relative_to(bundle)}: [DecodeTargetVideos] item {item_id!r} (number 0): "
                               "frames[1] fails the CRC-32 checksum -> the bundle is damaged: do not import it")
    assert _state(bundle) == before


def test_a_stage_reading_a_damaged_upstream_item_fails_instead_of_dropping_it(clean, tmp_path, config_text):
    """A damaged item of the input is not one bad item to skip: the shard would be complete without it forever.
    The stage stops, names the damaged file and item, and writes nothing."""
    work = _copy(clean[1], tmp_path / "work")
    use_config(tmp_path / "luigi.cfg", config_text(work))
    try:
        from pipeline import SynthesizeSourceVideos

        task = SynthesizeSourceVideos(benchmark="SYN", shard=0)
        depth = _shard(work, "EstimateDepth", 0)
        with h5py.File(depth, "r") as f:
            n = len(f["items/0000000/frames"])
        item_id = _flip_element(depth, "frames", index=n - 1)
        task.shard_file().unlink()
        assert not task.complete()
        with pytest.raises(DamagedItemError, match=re.escape(f"{depth}: item {item_id!r} of this EstimateDepth output "
                                                             "is damaged")):
            task.run()
        assert not task.shard_file().exists() and not list(task.output_dir().glob(".*.tmp-*"))
    finally:
        reset_config()


def test_verify_names_each_flipped_byte_and_repair_rebuilds_exactly_those_shards(clean, tmp_path, config_text):
    work, reference = clean
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text(config_text(work))
    ok = _verify(work, cfg)
    assert ok.returncode == 0 and "10 HDF5 files" in ok.stdout and "all intact" in ok.stdout, ok.stdout

    damaged = {}
    for stage, shard, extra, dataset, message in VICTIMS:
        path = _shard(work, stage, shard, extra)
        damaged[path] = (stage, shard, extra, message, _flip_element(path, dataset))
    before = _state(work)

    found = _verify(work, cfg)
    assert found.returncode == 1, found.stdout + found.stderr
    lines = [line for line in found.stdout.splitlines() if line.startswith(("EstimateDepth", "Synth", "Decode",
                                                                            "ExtractFlow"))]
    assert len(lines) == len(VICTIMS), found.stdout
    for path, (stage, shard, extra, message, item_id) in damaged.items():
        rel = str(path.relative_to(work))
        (line,) = [line for line in lines if line.startswith(rel + ":")]
        command = (f"luigi --module pipeline {stage} --benchmark SYN{' ' + ' '.join(extra) if extra else ''} "
                   f"--shard {shard} --num-shards 2 --local-scheduler")
        assert line.startswith(f"{rel}: [{stage}] item {item_id!r} (number 0): {message}"), line
        assert line.endswith(f" -> run `python -m pipeline.verify {work} --repair` (or delete the file), then "
                             f"`{command}`"), line
    assert _state(work) == before, "verify only reads"

    repaired = _verify(work, cfg, "--repair")
    assert repaired.returncode == 1
    commands = [line.strip() for line in repaired.stdout.splitlines() if line.startswith("  luigi ")]
    assert len(commands) == len(VICTIMS)
    for path in damaged:
        assert not path.exists() and path.with_name(path.name + ".damaged-1").is_file()
    for command in commands:  # exactly what verify printed
        proc = subprocess.run(command.split() + ["--no-lock"], cwd=tmp_path, env=subprocess_env(cfg),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    assert _verify(work, cfg).returncode == 0
    for path in damaged:
        assert_same_store(path, reference / path.relative_to(work))
    after = _state(work)
    rebuilt = {str(p.relative_to(work)) for p in damaged}
    reports = {r.replace(".h5", ".report.json") for r in rebuilt}
    untouched = {k: v for k, v in before.items() if k not in rebuilt | reports}
    assert {k: after[k] for k in untouched} == untouched, "every other file is byte for byte and mtime the same"
    assert set(after) - set(before) == {r + ".damaged-1" for r in rebuilt}
