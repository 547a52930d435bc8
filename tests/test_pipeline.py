"""The stage framework on real clips: outputs, reports, bad input, atomicity under SIGKILL, keys."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.store import StoreReader, is_complete
from pipeline.base import KILL_AFTER_ITEMS_ENV
from tests.conftest import manifest_frame_counts
from tests.pipeline_helpers import REPO, build, luigi_command, real_target_tree, reset_config, use_config

CONFIG = """
[paths]
workdir = {workdir}

[benchmark.REAL]
classes = hmdb,ucf
source_root = {root}/source
target_root = {root}/target
device = cpu
frame_short_side = {short_side}
target_shards = 1
"""


@pytest.fixture
def real_benchmark(tmp_path, realdata):
    root = real_target_tree(realdata, tmp_path / "data")
    cfg = use_config(tmp_path / "luigi.cfg", CONFIG.format(workdir=tmp_path / "work", root=root, short_side=64))
    yield tmp_path, root, cfg
    reset_config()


def _bad_files(folder: Path) -> list[str]:
    (folder / "empty video.mp4").write_bytes(b"")
    (folder / "garbage!.avi").write_bytes(b"RIFF" + os.urandom(2000))
    vw = cv2.VideoWriter(str(folder / "one frame ü.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    vw.write(np.zeros((32, 32, 3), np.uint8))
    vw.release()
    return ["empty video.mp4", "garbage!.avi", "one frame ü.avi"]


def test_decode_stage_writes_every_real_clip_with_its_true_frame_count_and_reports_bad_ones(real_benchmark, realdata):
    from pipeline import DecodeTargetVideos

    tmp_path, root, _ = real_benchmark
    bad = _bad_files(root / "target" / "hmdb")
    task = DecodeTargetVideos(benchmark="REAL", shard=0)
    assert build([task])
    reader = StoreReader(task.shard_file())
    counts = manifest_frame_counts(realdata)
    assert len(reader.ids) == 13
    for item_id in reader.ids:
        assert reader.num_frames(item_id) == counts[Path(item_id).name], item_id
    assert min(reader.read_frames(reader.ids[0], [0]).shape[1:3]) == 64
    report = json.loads(task.report_file().read_text())
    assert report["tried"] == 16 and report["written"] == 13
    assert sorted(Path(s["id"]).name for s in report["skipped"]) == sorted(bad)
    assert all(s["reason"] for s in report["skipped"])
    params = json.loads((task.output_dir() / "params.json").read_text())
    assert params["params"] == {"frame_short_side": 64}


def test_a_byte_changing_parameter_gives_a_new_output_folder(real_benchmark):
    from pipeline import DecodeTargetVideos

    tmp_path, root, cfg = real_benchmark
    key64 = DecodeTargetVideos(benchmark="REAL", shard=0).output_key()
    use_config(cfg, CONFIG.format(workdir=tmp_path / "work", root=root, short_side=96))
    key96 = DecodeTargetVideos(benchmark="REAL", shard=0).output_key()
    assert key64 != key96
    assert DecodeTargetVideos(benchmark="REAL", shard=0, short_side=64).output_key() == key64


def test_sigkill_in_the_middle_of_a_shard_leaves_it_incomplete_and_a_rerun_completes_it(real_benchmark):
    from pipeline import DecodeTargetVideos

    tmp_path, root, cfg = real_benchmark
    task = DecodeTargetVideos(benchmark="REAL", shard=0)
    out_dir = task.output_dir()
    cmd = luigi_command("DecodeTargetVideos", "--benchmark", "REAL", "--shard", "0", config=cfg, cwd=tmp_path)
    # PYTHONPATH: this checkout's code, not an installed copy (whose output keys may differ)
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(cfg), "PYTHONPATH": str(REPO)}
    # The stage kills itself (SIGKILL) right after its third item is written: mid-shard, at a known point.
    env[KILL_AFTER_ITEMS_ENV] = "3"
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    assert list(out_dir.glob(".shard-*.tmp-*")), "the stage was not caught while writing"
    assert not is_complete(task.shard_file()) and not task.complete()

    assert build([task])  # the rerun removes the dead writer's temporary file and writes the shard
    assert task.complete() and not list(out_dir.glob(".shard-*.tmp-*"))
    rerun = StoreReader(task.shard_file())

    use_config(cfg, CONFIG.format(workdir=tmp_path / "clean", root=root, short_side=64))
    clean_task = DecodeTargetVideos(benchmark="REAL", shard=0)
    assert build([clean_task])
    clean = StoreReader(clean_task.shard_file())
    assert rerun.ids == clean.ids
    for item_id in clean.ids:
        assert np.array_equal(rerun.read_frames(item_id), clean.read_frames(item_id))
