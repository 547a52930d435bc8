"""Many workers, one scheduler: a real `luigid` on loopback and two worker processes share SYN's sharded
stages in one workdir. Every task runs exactly once, in one of the two workers, and the outputs equal those
of a single-worker run (which runs alongside, with the local scheduler, in its own workdir)."""
from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tests.pipeline_helpers import (assert_same_store, build, reset_config, subprocess_env, tiny_syn_config, use_config,
                                    write_tiny_syn_config)


# Every task of PrepareData on this configuration: 1 + 2 indexes + 3 x (depth, synthesis, source flow)
# + 2 x (decoding, target flow) + PrepareData itself.
EXPECTED_TASKS = 17
RUNNING = re.compile(r"Worker Worker\(salt=\w+, workers=1, host=[^,]+, username=[^,]+, pid=(\d+)\) running\s+(.+)$")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"luigid exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"luigid did not listen on 127.0.0.1:{port} within {timeout} s")


def _api(port: int, method: str, **data) -> dict:
    query = urllib.parse.urlencode({"data": json.dumps(data)})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/{method}?{query}", timeout=10) as r:
        return json.loads(r.read())["response"]


def _wait_until_both_scheduled(port: int, procs: list, logs: list, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p, log in zip(procs, logs):
            if p.poll() is not None:
                pytest.fail(f"a worker exited with {p.returncode} before work began:\n{log.read_text()[-3000:]}")
        workers = _api(port, "worker_list")
        if len(workers) == 2 and all(w["num_pending"] == EXPECTED_TASKS for w in workers):
            return
        time.sleep(0.5)
    pytest.fail(f"the two workers did not both schedule {EXPECTED_TASKS} tasks within {timeout} s")


@pytest.fixture
def luigid(tmp_path):
    """A central scheduler on a free loopback port with its state in the test's tmp folder."""
    port = _free_port()
    state = tmp_path / "luigid"
    state.mkdir()
    exe = shutil.which("luigid", path=str(Path(sys.executable).parent)) or "luigid"
    proc = subprocess.Popen([exe, "--port", str(port), "--address", "127.0.0.1",
                             "--state-path", str(state / "state.pickle"), "--logdir", str(state)],
                            cwd=state, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_port(port, proc)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stores(workdir: Path) -> dict[str, Path]:
    return {str(p.relative_to(workdir)): p for p in sorted(workdir.rglob("shard-*.h5"))}


def test_two_workers_on_one_luigid_produce_every_shard_once_and_equal_to_a_single_worker(tmp_path, luigid):
    shared, single = tmp_path / "shared", tmp_path / "single"
    cfg, single_cfg = write_tiny_syn_config(tmp_path, shared), write_tiny_syn_config(tmp_path, single)
    # The command a user runs on every machine: same luigi.cfg, same workdir, one central scheduler. An idle
    # Luigi worker asks for work every wait interval + uniform(0, jitter) seconds, 1 to 6 s by default, while
    # a busy one asks again the moment a task ends: with tasks of a second or less, the busy worker can run
    # the whole graph between two polls of the idle one (CI saw [17, 0]). So these poll every 0.1 s.
    worker = [sys.executable, "-m", "luigi", "--module", "pipeline", "PrepareData", "--benchmark", "SYN",
              "--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid), "--workers", "1",
              "--worker-keep-alive", "--worker-wait-interval", "0.1", "--worker-wait-jitter", "0",
              "--log-level", "INFO", "--no-lock"]
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    # The scheduler hands out no work until both workers have scheduled the whole graph; otherwise the worker
    # that finishes importing first can run every task before the other one asks (seen on a loaded CI box).
    _api(luigid, "pause")
    procs = []
    for log in logs:
        with open(log, "w") as err:
            procs.append(subprocess.Popen(worker, cwd=tmp_path, env=subprocess_env(cfg), stdout=subprocess.DEVNULL,
                                          stderr=err))
    _wait_until_both_scheduled(luigid, procs, logs)
    _api(luigid, "unpause")
    reference = subprocess.run([sys.executable, "-m", "luigi", "--module", "pipeline", "PrepareData", "--benchmark",
                                "SYN", "--local-scheduler", "--workers", "1", "--no-lock"], cwd=tmp_path,
                               env=subprocess_env(single_cfg), capture_output=True, text=True, timeout=600)
    for p in procs:
        p.wait(timeout=600)
    text = [log.read_text() for log in logs]
    # A worker some of whose tasks were run by the other one ends with luigi.cfg's [retcode] already_running
    # (10) or not_run (25): expected here. Failures (30 and up) are not.
    codes = [p.returncode for p in procs]
    assert set(codes) <= {0, 10, 25}, f"worker exit codes {codes}:\n" + "\n".join(t[-3000:] for t in text)
    assert reference.returncode == 0, reference.stderr[-3000:]

    # Who ran what: each worker logs "running <task>" once per task it executes.
    runs = Counter()
    per_worker = []
    for t in text:
        mine = [m.group(2).strip() for line in t.splitlines() if (m := RUNNING.search(line))]
        per_worker.append(len(mine))
        runs.update(mine)
    twice = {task: n for task, n in runs.items() if n > 1}
    assert not twice, f"tasks run more than once: {twice}"
    assert len(runs) == EXPECTED_TASKS, sorted(runs)
    assert all(n >= 1 for n in per_worker), f"both workers took work: {per_worker}"
    print(f"\nscale-out: {len(procs)} workers on one luigid ran {sum(runs.values())} tasks "
          f"({per_worker[0]} + {per_worker[1]}), none twice; worker exit codes {codes}")

    # The scheduler saw all of them finish (this is what the luigid page shows).
    done = _api(luigid, "task_list", status="DONE", upstream_status="", search="")
    assert len(done) == EXPECTED_TASKS, sorted(done)
    with urllib.request.urlopen(f"http://127.0.0.1:{luigid}/static/visualiser/index.html", timeout=10) as page:
        assert page.status == 200

    # Every shard exists once, with the report its one run wrote, and equals the single-worker output.
    got, want = _stores(shared), _stores(single)
    assert sorted(got) == sorted(want) and len(got) == 3 * 3 + 2 * 2
    for rel, path in got.items():
        assert path.with_name(path.name.replace(".h5", ".report.json")).is_file(), rel
        assert_same_store(path, want[rel])
    assert not list(shared.rglob(".*.tmp-*"))


def test_a_worker_removes_only_its_own_shards_dead_temporaries(tmp_path):
    """On a shared workdir a temporary file may belong to a live writer on another machine, whose process
    id means nothing here: a stage cleans up only the temporaries of the shard it is about to write."""
    use_config(tmp_path / "luigi.cfg", tiny_syn_config(tmp_path / "work"))
    try:
        from pipeline import EstimateDepth

        first = EstimateDepth(benchmark="SYN", shard=0)
        assert build([first])
        folder = first.output_dir()
        dead_pid = 2 ** 22 + 12345  # above pid_max's default range: no such process here
        own = folder / f".shard-0001-of-0003.h5.tmp-{dead_pid}-0badc0de"
        other_host = folder / f".shard-0002-of-0003.h5.tmp-{dead_pid}-0ddba11"
        own.write_bytes(b"left by a killed writer of shard 1")
        other_host.write_bytes(b"being written by a worker on another machine")
        assert build([EstimateDepth(benchmark="SYN", shard=1)])
        assert not own.exists(), "the dead writer's temporary of this shard is removed"
        assert other_host.exists(), "another shard's temporary is left alone"
    finally:
        reset_config()
