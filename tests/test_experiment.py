"""RunExperiment: the experiment table, one output per distinct run, resuming, and reports on a tiny SYN."""
from __future__ import annotations

import csv
import dataclasses

import pytest

from model.memory_bank import AGGREGATIONS
from model.paper_results import paper_result
from model.trainer import PAPER_PRESETS, SYN_PRESET, VARIANTS, TrainConfig
from pipeline import experiment as exp
from pipeline.experiment import EXPERIMENTS, Run, RunExperiment, canonical_overrides
from pipeline.train import Evaluate, typed_overrides
from tests.pipeline_helpers import build, reset_config, tiny_syn_config, use_config

FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.fixture
def tiny_syn(tmp_path):
    use_config(tmp_path / "luigi.cfg", tiny_syn_config(tmp_path / "work", source_shards=1, target_shards=1,
                                                       epochs=2, warmup_epochs=1, train_threads=1))
    yield tmp_path / "work"
    reset_config()


def test_every_experiment_has_a_paper_and_a_syn_grid_of_valid_runs():
    assert set(EXPERIMENTS) == {"table2", "table3", "table4", "table5", "fig4"}
    for name, grids in EXPERIMENTS.items():
        assert set(grids) == {"paper", "SYN"}, name
        for grid, runs in grids.items():
            assert runs and len({r.name for r in runs}) == len(runs), (name, grid)
            for run in runs:
                assert run.variant in VARIANTS, (name, run)
                # rgb_backbone (i3d | clip) is the TrainConfig field of Table 5's CLIP branch.
                assert set(run.overrides) <= FIELDS | {"rgb_backbone"}, (name, run)
                assert not run.sweep or run.sweep in run.overrides, (name, run)


def test_the_tables_cover_the_papers_rows():
    t2 = EXPERIMENTS["table2"]["SYN"]
    assert [r.variant for r in t2] == ["SO_RGB", "SO_RGB_FLOW", "SO_RGB_FLOW_CFB", "FULL"]
    t3 = EXPERIMENTS["table3"]["paper"]
    assert sorted(r.overrides["aggregation"] for r in t3) == sorted(
        ["random", "mean", "simw_sum", "simw_mean_top5", "simw_sum_top5", "simw_top1", "simw_random_top5"])
    assert {r.variant for r in t3} == {"SO_RGB_FLOW_CFB"} and len(AGGREGATIONS) == 7
    t4 = EXPERIMENTS["table4"]["paper"]
    assert [r.overrides.get("da", "none") for r in t4] == ["none", "dan", "mcc", "bnm"]
    assert all(r.overrides["lambda3"] > 0 for r in t4[1:])
    t5 = EXPERIMENTS["table5"]["paper"]
    assert [(r.variant, r.overrides.get("rgb_backbone", "i3d")) for r in t5] == [
        ("SO_RGB", "i3d"), ("SO_RGB", "clip"), ("FULL", "i3d"), ("FULL", "clip")]
    for grid in ("paper", "SYN"):
        fig4 = EXPERIMENTS["fig4"][grid]
        sweeps = {}
        for r in fig4:
            assert r.variant == "FULL" and set(r.overrides) == {r.sweep}
            sweeps.setdefault(r.sweep, []).append(r.overrides[r.sweep])
        assert set(sweeps) == {"lambda1", "bank_size", "lambda2", "num_paces"}
        assert all(len(v) >= 3 and len(set(v)) == len(v) for v in sweeps.values()), sweeps
    # SYN's reduced grid passes through SYN's preset, so its default point is table2's FULL run.
    syn = {r.sweep: [] for r in EXPERIMENTS["fig4"]["SYN"]}
    for r in EXPERIMENTS["fig4"]["SYN"]:
        syn[r.sweep].append(r.overrides[r.sweep])
    assert all(SYN_PRESET[k] in v for k, v in syn.items())
    # The paper grid passes through every real preset's value (lambda1 1 / 20, N 60, lambda2, 5 paces).
    paper = {r.sweep: [] for r in EXPERIMENTS["fig4"]["paper"]}
    for r in EXPERIMENTS["fig4"]["paper"]:
        paper[r.sweep].append(r.overrides[r.sweep])
    for preset in (PAPER_PRESETS[b] for b in ("E2H", "B2U", "S2U")):
        assert all(preset[k] in v for k, v in paper.items()), preset


def test_paper_numbers_are_table_1_for_the_full_method_and_absent_elsewhere():
    assert paper_result("E2H", "table2", "FULL") == (77.4, "Table 1")
    assert paper_result("B2U", "table5", "FULL, I3D") == (81.1, "Table 1")
    assert paper_result("S2U", "table2", "FULL") == (97.3, "Table 1")
    assert paper_result("E2H", "table2", "SO_RGB") == (None, "")
    assert paper_result("SYN", "table2", "FULL") == (None, "")


def test_unknown_override_names_are_rejected_with_the_name():
    with pytest.raises(ValueError, match="'lambda_1'"):
        typed_overrides({"lambda_1": 2})
    assert typed_overrides({"lambda1": 2, "bank_size": 16.0}) == {"lambda1": 2.0, "bank_size": 16}


def test_the_same_run_written_two_ways_has_one_output_key(tiny_syn):
    def key(variant, overrides, seed=0):
        return Evaluate(benchmark="SYN", variant=variant, seed=seed,
                        overrides=canonical_overrides("SYN", variant, seed, overrides)).output_key()

    table2_cfb = RunExperiment(benchmark="SYN", experiment="table2").evaluations()[2][2]
    table3_random = next(t for r, _, t in RunExperiment(benchmark="SYN", experiment="table3").evaluations()
                         if r.name == "random")
    assert table2_cfb.output_key() == table3_random.output_key()
    assert table2_cfb.task_id == table3_random.task_id  # one Luigi task, not two with one folder
    assert key("FULL", {"lambda1": 1}) == key("FULL", {"lambda1": 1.0}) == key("FULL", {})
    assert key("FULL", {"lambda1": 2}) != key("FULL", {}) != key("FULL", {}, seed=1)
    assert key("SO_RGB_FLOW_CFB", {"aggregation": "mean"}) != table2_cfb.output_key()
    # A Fig. 4 run's override reaches the training config.
    assert Evaluate(benchmark="SYN", variant="FULL", overrides={"bank_size": 4}).requires().train_config().bank_size == 4


def test_experiments_resume_share_runs_and_write_reports_and_plots(tiny_syn, monkeypatch):
    monkeypatch.setitem(EXPERIMENTS, "table3", {**EXPERIMENTS["table3"], "SYN": [
        Run("random", "SO_RGB_FLOW_CFB", {"aggregation": "random"}),
        Run("mean", "SO_RGB_FLOW_CFB", {"aggregation": "mean"})]})
    monkeypatch.setitem(EXPERIMENTS, "fig4", {**EXPERIMENTS["fig4"], "SYN": exp._fig4({"lambda1": (1.0, 2.0)})})

    # Table 2's CFB run done first (half an experiment): table3 must reuse it, not rewrite it.
    shared = Evaluate(benchmark="SYN", variant="SO_RGB_FLOW_CFB", seed=0)
    assert build([shared])
    files = [shared.output_dir() / "metrics.json", shared.requires().output_dir() / "training.json",
             shared.requires().output_dir() / "checkpoint.pt"]
    stamps = [f.stat().st_mtime_ns for f in files]

    table3 = RunExperiment(benchmark="SYN", experiment="table3", seeds="0")
    assert build([table3])
    assert [f.stat().st_mtime_ns for f in files] == stamps
    trained = sorted(p.name for p in (tiny_syn / "Train" / "SYN").iterdir())
    assert len(trained) == 2  # CFB random (shared) + CFB mean
    report = (table3.output_dir() / "report.md").read_text()
    assert "| random | SO_RGB_FLOW_CFB | aggregation=random |" in report and "| mean |" in report
    rows = list(csv.DictReader(open(table3.output_dir() / "results.csv")))
    assert [r["run"] for r in rows] == ["random", "mean"]
    assert rows[0]["dir"] == str(shared.output_dir())
    assert (tiny_syn / "reports" / "SYN-table3" / "report.md").is_file()

    fig4 = RunExperiment(benchmark="SYN", experiment="fig4", seeds="0")
    assert build([fig4])
    assert (fig4.output_dir() / "lambda1.png").stat().st_size > 1000
    assert "![lambda1](lambda1.png)" in (fig4.output_dir() / "report.md").read_text()
    assert len(list((tiny_syn / "Train" / "SYN").iterdir())) == 4  # + FULL at lambda1 1 and 2
