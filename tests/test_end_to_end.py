"""The README's main command on a tiny SYN: every stage runs and the report is written."""
from __future__ import annotations

import csv

from tests.pipeline_helpers import run_luigi

TINY_SYN = """
[paths]
workdir = {workdir}

[benchmark.SYN]
device = cpu
stills_per_class = 3
videos_per_class = 2
source_shards = 2
target_shards = 1
flow_workers = 2
epochs = 2
warmup_epochs = 1
batch_size = 4
"""


def test_run_benchmark_on_a_tiny_syn_writes_the_report(tmp_path):
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text(TINY_SYN.format(workdir=tmp_path / "work"))
    proc = run_luigi("RunBenchmark", config=cfg, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "report at" in proc.stdout
    report_dir = tmp_path / "work" / "reports" / "SYN"
    assert (report_dir / "report.md").is_file()
    rows = list(csv.DictReader(open(report_dir / "results.csv")))
    assert {r["variant"] for r in rows} >= {"SO_RGB", "SO_RGB_FLOW", "SO_RGB_FLOW_CFB", "FULL"}
    assert list(report_dir.glob("confusion_*.png")) and list(report_dir.glob("tsne_*.png"))
    # Rerunning does nothing: every stage is complete.
    again = run_luigi("RunBenchmark", config=cfg, cwd=tmp_path)
    assert again.returncode == 0 and "report at" not in again.stdout
