"""Fault suite on a tiny SYN: SIGKILL during depth, synthesis, flow, a training epoch and an import, then a
rerun; a full disk (simulated in-process, and a real write failure through RLIMIT_FSIZE); corrupted HDF5
files in the workdir; a reader polling while a shard is written.

Kills are placed, not timed: the killed process runs a small driver (written to the test's tmp folder) that
hooks one function of the code under test to leave a marker and wait there, and the test SIGKILLs the whole
process group once the marker appears. Nothing in the production code knows about it.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from data.store import StoreReader, StoreWriteError, is_complete
from tests.pipeline_helpers import (REPO, assert_same_store, build, reset_config, subprocess_env, tiny_syn_config,
                                    use_config, write_tiny_syn_config)


DRIVER = textwrap.dedent('''
    """Runs a command of the pipeline with one hook that marks a point and waits there to be killed."""
    import os, sys, time


    def reached(text):
        with open(os.environ["FAULT_MARKER"], "a") as f:
            f.write(text + "\\n")
        time.sleep(float(os.environ.get("FAULT_WAIT", "600")))


    def install(point):
        if point.startswith("shard:"):  # a ShardWriter of this stage wrote its first item (into its temp file)
            from data import store
            stage, add = point.split(":", 1)[1], store.ShardWriter.add
            def hooked(self, *a, **k):
                add(self, *a, **k)
                if self.stage == stage:
                    reached(f"{self.path.name} {len(self)}")
            store.ShardWriter.add = hooked
        elif point.startswith("checkpoint:"):  # epoch N is trained and in metrics.csv, its checkpoint not saved
            import model.trainer as trainer
            epoch, save = int(point.split(":", 1)[1]), trainer.atomic_torch_save
            def hooked(obj, path):
                if obj.get("epoch") == epoch:
                    reached(f"epoch {epoch}")
                save(obj, path)
            trainer.atomic_torch_save = hooked
        elif point == "import":  # the first file of a folder is copied into the import's temporary folder
            import pipeline.share as share
            copy = share._copy_file
            def hooked(src, dst):
                out = copy(src, dst)
                reached(str(dst))
                return out
            share._copy_file = hooked


    if __name__ == "__main__":  # worker pools may spawn: they re-import this file and must not run it
        install(os.environ["FAULT_POINT"])
        if sys.argv[1] == "luigi":
            from luigi.cmdline import luigi_run
            luigi_run(sys.argv[2:])
        elif sys.argv[1] == "share":
            import pipeline.share
            sys.exit(pipeline.share.main(sys.argv[2:]))
''')


# --- helpers --------------------------------------------------------------------------------------------------

def _luigi(*args: str) -> list[str]:
    return [sys.executable, "-m", "luigi", "--module", "pipeline", *args, "--local-scheduler", "--no-lock"]


def _run(cmd, cfg: Path, cwd: Path, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=subprocess_env(cfg), capture_output=True, text=True, timeout=timeout,
                          **kw)


def _kill_at(point: str, cmd: list[str], cfg: Path, cwd: Path, timeout=240) -> str:
    """Run `cmd` under the driver until it reaches `point`, SIGKILL its process group, return the marker."""
    driver = cwd / "fault_driver.py"
    driver.write_text(DRIVER)
    marker = cwd / f"marker-{time.monotonic_ns()}"
    env = {**subprocess_env(cfg), "FAULT_MARKER": str(marker), "FAULT_POINT": point}
    log = marker.with_suffix(".log")
    with open(log, "w") as err:  # a file, not a pipe: a full pipe would block the process before the point
        proc = subprocess.Popen([sys.executable, str(driver), *cmd], cwd=cwd, env=env, stdout=err, stderr=err,
                                start_new_session=True)
    deadline = time.time() + timeout
    try:
        while not (marker.exists() and marker.read_text().strip()):
            if proc.poll() is not None:
                pytest.fail(f"{point}: the process ended before it was killed:\n{log.read_text()[-3000:]}")
            if time.time() > deadline:
                pytest.fail(f"{point}: not reached in {timeout} s")
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: flow / data-loader workers too
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return marker.read_text()


def _copy_workdir(src: Path, dst: Path, stages=None) -> Path:
    for stage_dir in sorted(src.iterdir()):
        if stages is None or stage_dir.name in stages:
            shutil.copytree(stage_dir, dst / stage_dir.name, symlinks=True)
    return dst


def _digest(folder: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file below `folder` (to prove files were left alone)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp-*")]


def _shard(workdir: Path, stage: str, shard: int, n: int) -> Path:
    """The shard file of a stage in a workdir holding one configuration of it."""
    (folder,) = (workdir / stage / "SYN").iterdir()
    return folder / f"shard-{shard:04d}-of-{n:04d}.h5"


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Every data stage of the tiny SYN, run once without faults: the reference of every comparison."""
    tmp = tmp_path_factory.mktemp("faults")
    workdir = tmp / "clean"
    cfg = write_tiny_syn_config(tmp, workdir)
    proc = _run(_luigi("PrepareData", "--benchmark", "SYN"), cfg, tmp, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


@pytest.fixture
def in_process(tmp_path):
    """Run stages in this process against a given workdir; restores the repository config afterwards."""
    def use(workdir: Path) -> Path:
        return use_config(tmp_path / "luigi.cfg", tiny_syn_config(workdir))
    yield use
    reset_config()


# --- SIGKILL --------------------------------------------------------------------------------------------------

def test_sigkill_during_depth_synthesis_and_flow_then_rerun_completes_equal_to_a_clean_run(clean, tmp_path,
                                                                                         in_process):
    """Each stage is killed while its shard is half written; the next run (which needs that shard) redoes it.
    A killed shard is never complete, nothing downstream runs on it, and the rerun equals a clean run."""
    work = _copy_workdir(clean, tmp_path / "work", {"GenerateSyn", "SourceIndex", "TargetIndex"})
    cfg = write_tiny_syn_config(tmp_path, work)
    in_process(work)
    from pipeline import EstimateDepth, ExtractFlow, SynthesizeSourceVideos

    depth, synth = EstimateDepth(benchmark="SYN", shard=1), SynthesizeSourceVideos(benchmark="SYN", shard=1)
    flow = ExtractFlow(benchmark="SYN", domain="source", shard=1)
    steps = [(depth, "EstimateDepth", ["--shard", "1"]),
             (synth, "SynthesizeSourceVideos", ["--shard", "1"]),
             (flow, "ExtractFlow", ["--domain", "source", "--shard", "1"])]
    for task, stage, args in steps:
        marker = _kill_at(f"shard:{stage}", ["luigi", "--module", "pipeline", stage, "--benchmark", "SYN", *args,
                                             "--local-scheduler"], cfg, tmp_path)
        assert marker.startswith("shard-0001-of-0003.h5 ")
        temps = list(task.output_dir().glob(".shard-0001-of-0003.h5.tmp-*"))
        assert len(temps) == 1, "the dead writer's temporary file is where it was"
        assert not task.complete() and not task.shard_file().exists() and not is_complete(temps[0])
        with pytest.raises(ValueError, match="not a complete store file"):
            StoreReader(temps[0])
        assert not task.report_file().exists()
        for later, _, _ in steps[steps.index((task, stage, args)) + 1:]:
            assert not later.output_dir().exists(), "nothing downstream ran on a killed shard"
    # The previous kills were redone by the next step's run; finish the last one.
    assert build([flow])
    for task, stage, _ in steps:
        assert task.complete()
        assert_same_store(task.shard_file(), clean / task.shard_file().relative_to(work))
        assert not list(task.output_dir().glob(".*.tmp-*")), f"{stage}: the dead writer's temporary is removed"


def test_sigkill_during_a_training_epoch_resumes_at_the_last_finished_epoch_with_the_same_result(clean, tmp_path):
    """Killed in epoch 2 after its metrics row was written but before its checkpoint (the point where a
    resume could go wrong): the rerun resumes after epoch 1 and ends exactly like an uninterrupted run."""
    import torch

    work = _copy_workdir(clean, tmp_path / "work")
    ref = _copy_workdir(clean, tmp_path / "ref")
    cfg, ref_cfg = write_tiny_syn_config(tmp_path, work), write_tiny_syn_config(tmp_path, ref)
    train = ["Train", "--benchmark", "SYN", "--variant", "FULL"]
    reference = subprocess.Popen(_luigi(*train), cwd=tmp_path, env=subprocess_env(ref_cfg), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)  # uninterrupted, alongside
    try:
        _kill_at("checkpoint:1", ["luigi", "--module", "pipeline", *train, "--local-scheduler", "--no-lock"], cfg, tmp_path)
        out_dir = next((work / "Train" / "SYN").iterdir())
        ckpt = torch.load(out_dir / "checkpoint.pt", weights_only=True)
        assert ckpt["epoch"] == 0, "killed during epoch 2: the last finished epoch is the first"
        killed_rows = (out_dir / "metrics.csv").read_text().splitlines()
        assert len(killed_rows) == 3, "epoch 2's row was written just before the kill"
        assert (out_dir / "bank" / "epoch_001.h5").exists() and not (out_dir / "training.json").exists()

        resumed = _run(_luigi(*train), cfg, tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resuming {out_dir} after epoch 0" in resumed.stdout + resumed.stderr
    finally:
        ref_out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, ref_out[-3000:]

    ref_dir = next((ref / "Train" / "SYN").iterdir())
    assert out_dir.name == ref_dir.name
    rows = (out_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1] == killed_rows[1], "epoch 1 was kept, not redone"

    def comparable(lines):  # wall-clock columns differ between runs
        header = lines[0].split(",")
        keep = [i for i, h in enumerate(header) if h not in ("seconds", "clips_per_s")]
        return [[line.split(",")[i] for i in keep] for line in lines]

    assert comparable(rows) == comparable((ref_dir / "metrics.csv").read_text().splitlines())
    result, ref_result = (json.loads((d / "result.json").read_text()) for d in (out_dir, ref_dir))
    assert result["accuracy"] == ref_result["accuracy"]
    assert result.get("per_class_accuracy") == ref_result.get("per_class_accuracy")
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (out_dir, ref_dir))
    for part in ("rgb", "flow", "pace_head"):
        if a[part] is None:
            assert b[part] is None
            continue
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs from the uninterrupted run"
    with h5py.File(out_dir / "bank" / "epoch_001.h5") as fa, h5py.File(ref_dir / "bank" / "epoch_001.h5") as fb:
        assert sorted(fa) == sorted(fb)
        for name in fa:
            assert np.array_equal(fa[name][()], fb[name][()]), f"bank snapshot {name}"
    assert not _temporaries(out_dir)


def test_sigkill_during_an_import_leaves_no_folder_that_looks_done_and_a_rerun_imports_everything(clean, tmp_path,
                                                                                                   in_process):
    share = pytest.importorskip("pipeline.share")
    in_process(clean)
    from pipeline import DecodeTargetVideos, ExtractFlow

    tasks = share.select_tasks("SYN", "ExtractFlow,DecodeTargetVideos", ["target"])
    bundle = tmp_path / "bundle"
    share.export_bundle(tasks, bundle)
    dest = tmp_path / "dest"
    cfg = write_tiny_syn_config(tmp_path, dest)
    in_process(dest)
    shards = [DecodeTargetVideos(benchmark="SYN", shard=i) for i in range(2)] + \
             [ExtractFlow(benchmark="SYN", domain="target", shard=i) for i in range(2)]

    copied = _kill_at("import", ["share", "import", str(bundle), "--workdir", str(dest)], cfg, tmp_path)
    assert ".tmp-" in copied, "killed while copying into a temporary folder"
    assert not any(t.complete() for t in shards), "no shard of a killed import is taken as complete"
    assert not any(t.output_dir().exists() for t in shards), "no destination folder appeared half-filled"

    proc = _run([sys.executable, "-m", "pipeline.share", "import", str(bundle), "--workdir", str(dest)], cfg,
                tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for t in shards:
        assert t.complete()
        assert_same_store(t.shard_file(), clean / t.shard_file().relative_to(dest))
    assert not _temporaries(dest), "the killed import's temporary folder is removed by the rerun"


# --- full disk ------------------------------------------------------------------------------------------------

def test_a_full_disk_gives_a_clear_error_and_leaves_earlier_outputs_intact(clean, tmp_path, in_process,
                                                                       monkeypatch):
    """Simulated in-process: the file system refuses a write in the middle of a shard (ENOSPC)."""
    work = _copy_workdir(clean, tmp_path / "work")
    in_process(work)
    from data import store
    from pipeline import SynthesizeSourceVideos

    task = SynthesizeSourceVideos(benchmark="SYN", shard=2)
    task.shard_file().unlink()
    task.report_file().unlink()
    before = _digest(work)

    calls = {"n": 0}
    real_write = store._write_vlen

    def disk_fills_up(group, name, chunks):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(group, name, chunks)

    monkeypatch.setattr(store, "_write_vlen", disk_fills_up)
    with pytest.raises(StoreWriteError) as info:
        task.run()
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert str(task.shard_file()) in message and "No space left on device" in message
    assert "Nothing was kept" in message and "free disk space" in message
    calls["n"] = 0
    assert not build([task]), "Luigi reports the task as failed"

    assert _digest(work) == before, "earlier outputs are byte for byte and mtime untouched"
    assert not _temporaries(work) and not task.complete() and not task.report_file().exists()
    monkeypatch.setattr(store, "_write_vlen", real_write)
    assert build([task])  # space is back: the rerun completes
    assert_same_store(task.shard_file(), clean / task.shard_file().relative_to(work))


def test_a_real_write_failure_of_the_file_system_fails_the_task_cleanly(clean, tmp_path, in_process):
    """The kernel refuses writes beyond a file size limit (RLIMIT_FSIZE -> EFBIG), the way a full disk refuses
    them (ENOSPC): the same path through HDF5. Before the fix this crashed h5py (segfault at close)."""
    work = _copy_workdir(clean, tmp_path / "work")
    cfg = write_tiny_syn_config(tmp_path, work)
    shard = _shard(work, "SynthesizeSourceVideos", 0, 3)
    shard.unlink()
    shard.with_name("shard-0000-of-0003.report.json").unlink()
    before = _digest(work)

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (48_000, 48_000))

    proc = _run(_luigi("SynthesizeSourceVideos", "--benchmark", "SYN", "--shard", "0"), cfg, tmp_path,
                preexec_fn=limit_file_size)
    assert proc.returncode == 30, f"task_failed expected, got {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "StoreWriteError" in proc.stderr and f"could not write {shard}" in proc.stderr
    assert "File too large" in proc.stderr and "Nothing was kept" in proc.stderr
    assert _digest(work) == before and not _temporaries(work)

    in_process(work)
    from pipeline import SynthesizeSourceVideos

    assert build([SynthesizeSourceVideos(benchmark="SYN", shard=0)])  # the limit is gone: the rerun completes
    assert_same_store(shard, clean / shard.relative_to(work))


def test_a_shard_whose_every_item_fails_for_a_broken_environment_is_not_taken_as_complete(clean, tmp_path,
                                                                                         in_process, monkeypatch):
    """Seen for real when a flow worker pool could not start: every item came back as failed and an empty
    shard was written as complete, so it was never redone. Now such a shard fails and keeps nothing, while
    a shard whose items are all bad *input* is still written (empty) with its report."""
    work = _copy_workdir(clean, tmp_path / "work", {"GenerateSyn", "SourceIndex", "TargetIndex", "EstimateDepth"})
    in_process(work)
    import data.synthesis
    from data.errors import BadInputError
    from pipeline import SynthesizeSourceVideos

    task = SynthesizeSourceVideos(benchmark="SYN", shard=0)

    def out_of_memory(*a, **k):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(data.synthesis, "synthesize_video", out_of_memory)
    with pytest.raises(RuntimeError, match=r"all 4 items failed.*CUDA error: out of memory.*nothing was written"):
        task.run()
    assert not task.complete() and not task.report_file().exists() and not _temporaries(work)

    def bad_input(still, *a, **k):
        raise BadInputError("still.png", "unusable")

    monkeypatch.setattr(data.synthesis, "synthesize_video", bad_input)
    task.run()
    report = json.loads(task.report_file().read_text())
    assert task.complete() and report["written"] == 0 and len(report["skipped"]) == 4


# --- corrupted files ------------------------------------------------------------------------------------------

def _truncate_half(p: Path) -> None:
    os.truncate(p, p.stat().st_size // 2)


def _garbage_header(p: Path) -> None:
    with open(p, "r+b") as f:
        f.write(np.random.default_rng(0).bytes(512))


def _not_hdf5(p: Path) -> None:
    p.write_text("<html><body>502 Bad Gateway</body></html>\n")


def _unfinished(p: Path) -> None:
    with h5py.File(p, "r+") as f:
        f.attrs["complete"] = 0


def _empty(p: Path) -> None:
    p.write_bytes(b"")


CORRUPTIONS = {"truncated to half its size": _truncate_half, "first 512 bytes overwritten": _garbage_header,
               "replaced by an HTML error page": _not_hdf5, "`complete` attribute cleared": _unfinished,
               "zero bytes": _empty}


def test_corrupted_hdf5_files_in_the_workdir_are_detected_and_regenerated(clean, tmp_path, in_process):
    work = _copy_workdir(clean, tmp_path / "work")
    in_process(work)
    from pipeline import DecodeTargetVideos, ExtractFlow, PrepareData, SynthesizeSourceVideos

    victims = [SynthesizeSourceVideos(benchmark="SYN", shard=0), SynthesizeSourceVideos(benchmark="SYN", shard=2),
               DecodeTargetVideos(benchmark="SYN", shard=1), ExtractFlow(benchmark="SYN", domain="target", shard=0),
               ExtractFlow(benchmark="SYN", domain="source", shard=1)]
    for task, (how, corrupt) in zip(victims, CORRUPTIONS.items()):
        corrupt(task.shard_file())
        assert not task.complete(), how
        with pytest.raises(ValueError, match="not a complete store file"):
            StoreReader(task.shard_file())
    victim_files = {str(t.shard_file().relative_to(work)) for t in victims}
    others = {k: v for k, v in _digest(work).items() if k.endswith(".h5") and k not in victim_files}

    assert build([PrepareData(benchmark="SYN")])
    for task in victims:
        assert task.complete()
        assert_same_store(task.shard_file(), clean / task.shard_file().relative_to(work))
    after = _digest(work)
    assert {k: after[k] for k in others} == others, "only the corrupted shards were regenerated"


# --- readers and writers --------------------------------------------------------------------------------------

WRITER = textwrap.dedent('''
    import sys, time
    import numpy as np
    from data.store import ShardWriter
    path, n, value = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with ShardWriter(path, stage="Test", benchmark="SYN", params={"version": value}) as w:
        for i in range(n):
            w.add(f"item{i:03d}", label=i, frames=np.full((3, 16, 16, 3), value, np.uint8))
            time.sleep(0.03)
''')


def test_a_reader_never_sees_a_half_written_file(tmp_path):
    """A reader polls the shard's path (and any temporary beside it) while a writer replaces version 1 by
    version 2: it only ever opens a complete version, and a reader opened on version 1 keeps reading it."""
    from data.store import ShardWriter

    path = tmp_path / "shard-0000-of-0001.h5"
    with ShardWriter(path, stage="Test", benchmark="SYN", params={"version": 10}) as w:
        for i in range(4):
            w.add(f"item{i:03d}", label=i, frames=np.full((3, 16, 16, 3), 10, np.uint8))
    old_reader = StoreReader(path)

    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    writer = subprocess.Popen([sys.executable, str(script), str(path), "40", "200"],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    seen, temp_seen, refused, polls = set(), 0, 0, 0
    while writer.poll() is None:
        polls += 1
        for tmp in tmp_path.glob(".shard-*.tmp-*"):
            temp_seen += 1
            try:
                r = StoreReader(tmp)
            except (ValueError, FileNotFoundError):
                refused += 1
            else:  # only possible between the last attribute and the rename: then it is the whole file
                assert len(r) == 40 and r.attrs["complete"] == 1, "a reader opened an unfinished file"
        if is_complete(path):
            r = StoreReader(path)
            n = len(r)
            assert n in (4, 40), f"a reader saw {n} items: a half-written file"
            assert int(r.read_frames(r.ids[-1], [0]).mean()) in (10, 200)
            seen.add(n)
        else:
            pytest.fail("the shard path was not a complete file at some moment")
        assert np.all(old_reader.read_frames("item003") == old_reader.read_frames("item003")[0, 0, 0, 0])
        time.sleep(0.005)
    assert writer.returncode == 0, writer.stderr.read()
    assert temp_seen > 0 and refused > 0, "the poll saw the write in progress, and refused it"
    print(f"\nreader: {polls} polls during the write, the temporary file refused {refused} of {temp_seen} times, "
          f"complete versions seen: {sorted(seen)} items")
    assert StoreReader(path).params == {"version": 200} and len(StoreReader(path)) == 40
    assert 4 in seen
    assert int(old_reader.read_frames("item003").mean()) == 10 and len(old_reader) == 4
