"""Helpers for tests that run Luigi stages against a temporary workdir and luigi.cfg."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import luigi
from luigi.configuration import LuigiConfigParser

REPO = Path(__file__).resolve().parents[1]


def tiny_syn_config(workdir, source_shards: int = 3, target_shards: int = 2, **settings) -> str:
    """luigi.cfg text for a SYN small enough for multi-process tests: 12 stills and 6 videos, one-level TV-L1
    with 5 inner iterations, 2 training epochs; ``settings`` add or replace [benchmark.SYN] keys."""
    syn = {"device": "cpu", "stills_per_class": 2, "videos_per_class": 1, "source_shards": source_shards,
           "target_shards": target_shards, "flow_workers": 1, "tvl1_nscales": 1, "tvl1_warps": 1,
           "tvl1_outer_iterations": 1, "tvl1_inner_iterations": 5, "epochs": 2, "warmup_epochs": 1,
           "batch_size": 4, **settings}
    lines = [f"{key} = {value}" for key, value in syn.items()]
    return "\n".join(["[paths]", f"workdir = {workdir}", "", "[benchmark.SYN]", *lines, ""])


def write_tiny_syn_config(tmp: Path, workdir: Path) -> Path:
    """``tiny_syn_config(workdir)`` written to ``tmp/luigi-<workdir name>.cfg`` (for subprocesses)."""
    cfg = tmp / f"luigi-{workdir.name}.cfg"
    cfg.write_text(tiny_syn_config(workdir))
    return cfg


def subprocess_env(cfg: Path) -> dict:
    """Environment of a pipeline subprocess: this config, one numeric thread, the repository importable."""
    return {**os.environ, "LUIGI_CONFIG_PATH": str(cfg), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def assert_same_store(a: Path, b: Path) -> None:
    """Two complete shard files hold the same items, arrays and attributes (decoded)."""
    import h5py
    import numpy as np

    from data.store import StoreReader

    ra, rb = StoreReader(a), StoreReader(b)
    assert ra.ids == rb.ids and np.array_equal(ra.labels, rb.labels), (a, b)
    assert ra.params == rb.params, (a, b)
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for k in range(len(ra.ids)):
            ga, gb = fa["items"][f"{k:07d}"], fb["items"][f"{k:07d}"]
            assert sorted(ga) == sorted(gb) and dict(ga.attrs) == dict(gb.attrs), (a, k)
            for name in ga:
                va, vb = ga[name][()], gb[name][()]
                if va.dtype == object:  # encoded frames / flows: one byte string per frame
                    assert len(va) == len(vb) and all(np.array_equal(x, y) for x, y in zip(va, vb)), (a, name)
                else:
                    assert np.array_equal(va, vb), (a, name)


def use_config(path: Path, text: str) -> Path:
    """Write a luigi.cfg and make it the active configuration (on top of the repository's)."""
    path.write_text(text, encoding="utf-8")
    os.environ["LUIGI_CONFIG_PATH"] = str(path)
    LuigiConfigParser._instance = None  # re-read on next use
    LuigiConfigParser._config_paths = [str(REPO / "luigi.cfg"), str(path)]
    luigi.configuration.get_config().reload()
    return path


def reset_config() -> None:
    os.environ.pop("LUIGI_CONFIG_PATH", None)
    LuigiConfigParser._instance = None
    LuigiConfigParser._config_paths = [str(REPO / "luigi.cfg")]
    luigi.configuration.get_config().reload()


def build(tasks, workers: int = 1) -> bool:
    return luigi.build(list(tasks), local_scheduler=True, workers=workers, log_level="WARNING")


def luigi_command(task: str, *args: str, config: Path, cwd: Path) -> list[str]:
    """The command a user types, run with this interpreter's environment."""
    exe = shutil.which("luigi", path=str(Path(sys.executable).parent)) or "luigi"
    return [exe, "--module", "pipeline", task, *args, "--local-scheduler"]


def run_luigi(task: str, *args: str, config: Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(config)}
    return subprocess.run(luigi_command(task, *args, config=config, cwd=cwd), cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def real_target_tree(realdata: Path, root: Path) -> Path:
    """The 13 real clips in the folder layout target/<dataset class>/<file>, plus nothing else."""
    for clip in sorted((realdata / "videos").iterdir()):
        cls = "ucf" if clip.suffix == ".avi" else "hmdb"
        (root / "target" / cls).mkdir(parents=True, exist_ok=True)
        os.symlink(clip, root / "target" / cls / clip.name)
    (root / "source" / "ucf").mkdir(parents=True, exist_ok=True)
    (root / "source" / "hmdb").mkdir(parents=True, exist_ok=True)
    return root
