"""RunExperiment(benchmark, experiment, seeds): one paper artefact (Tables 2-5, Fig. 4) as one command.

Every run of an experiment is an ordinary Evaluate (and Train) task: a variant plus TrainConfig overrides.
Overrides equal to the benchmark's resolved config are dropped first, so the same run written two ways is one
task with one output folder; runs shared between experiments (table2's SO_RGB_FLOW_CFB is table3's `random`
mode) are trained once, and a half-done experiment trains only its missing runs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import luigi

from model.memory_bank import AGGREGATIONS
from pipeline.base import Stage
from pipeline.benchmark import _csv_list
from pipeline.settings import benchmark_setting, is_generated_syn


@dataclass(frozen=True)
class Run:
    """One row of an experiment: a Table 2 variant and TrainConfig overrides; `sweep` names the swept field of
    a Fig. 4 panel (its value is ``overrides[sweep]``)."""

    name: str
    variant: str
    overrides: dict = field(default_factory=dict)
    sweep: str = ""


def _table2() -> list[Run]:
    return [Run(v, v) for v in ("SO_RGB", "SO_RGB_FLOW", "SO_RGB_FLOW_CFB", "FULL")]


def _table3() -> list[Run]:
    return [Run(a, "SO_RGB_FLOW_CFB", {"aggregation": a}) for a in AGGREGATIONS]


# Weight of the DA add-on in Table 4. The paper's lambda3 is not in the sources of this repository; 1.0 adds
# each add-on at the weight of the classification loss.
TABLE4_LAMBDA3 = 1.0


def _table4() -> list[Run]:
    return [Run("CFB", "SO_RGB_FLOW_CFB")] + [
        Run(f"CFB + {da.upper()}", "SO_RGB_FLOW_CFB", {"da": da, "lambda3": TABLE4_LAMBDA3}) for da in ("dan", "mcc", "bnm")]


def _table5() -> list[Run]:
    # I3D is the default RGB branch: its rows are table2's SO_RGB and FULL runs.
    return [Run(f"{v}, {b.upper()}", v, {} if b == "i3d" else {"rgb_backbone": b})
            for v in ("SO_RGB", "FULL") for b in ("i3d", "clip")]


def _fig4(grid: dict[str, tuple]) -> list[Run]:
    return [Run(f"{key} = {value}", "FULL", {key: value}, sweep=key) for key, values in grid.items() for value in values]


# Fig. 4 sweeps the FULL method over lambda1 (L_loc), the bank size N, lambda2 (L_vc) and the number of paces
# C_vp. Real benchmarks: a grid around the paper's defaults (lambda1 1 or 20, N = 60, lambda2 0.001-0.2,
# C_vp = 5; the exact published grid is not in the sources of this repository). SYN: three points around
# SYN's preset (lambda1 1, N 8, lambda2 0.5, 4 paces), so the sweep runs in CPU minutes.
FIG4_PAPER_GRID = {"lambda1": (0.1, 1.0, 10.0, 20.0), "bank_size": (20, 40, 60, 80, 100),
                   "lambda2": (0.001, 0.01, 0.1, 0.2, 0.5), "num_paces": (2, 3, 4, 5, 6)}
FIG4_SYN_GRID = {"lambda1": (0.5, 1.0, 2.0), "bank_size": (4, 8, 16), "lambda2": (0.1, 0.5, 1.0),
                 "num_paces": (2, 4, 6)}

# The experiments: name -> {"paper": runs on the real benchmarks, "SYN": runs on generated SYN benchmarks}.
EXPERIMENTS = {
    "table2": {"paper": _table2(), "SYN": _table2()},
    "table3": {"paper": _table3(), "SYN": _table3()},
    "table4": {"paper": _table4(), "SYN": _table4()},
    "table5": {"paper": _table5(), "SYN": _table5()},
    "fig4": {"paper": _fig4(FIG4_PAPER_GRID), "SYN": _fig4(FIG4_SYN_GRID)},
}
TITLES = {"table2": "Ablation of the components (Table 2)", "table3": "Flow aggregation of the memory bank (Table 3)",
          "table4": "CFB with DA add-ons (Table 4)", "table5": "I3D vs CLIP RGB branch (Table 5)",
          "fig4": "Sensitivity to lambda1, N, lambda2 and C_vp (Fig. 4)"}


def experiment_runs(benchmark: str, experiment: str) -> list[Run]:
    """The runs of `experiment` on `benchmark`: SYN's reduced grid on a generated SYN, else the paper grid."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}: use one of {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[experiment]["SYN" if is_generated_syn(benchmark) else "paper"]


def canonical_overrides(benchmark: str, variant: str, seed: int, overrides: dict) -> dict:
    """`overrides` without the entries the benchmark's config already has: one task per distinct run."""
    from pipeline.train import training_config, typed_overrides

    base = training_config(benchmark, variant, seed).to_dict()
    return {k: v for k, v in sorted(typed_overrides(overrides).items()) if base.get(k, object()) != v}


def paper_number(benchmark: str, experiment: str, run: Run) -> tuple[float | None, str]:
    """The paper's published accuracy for this run, and where it is published. The full method's result is
    the paper's Table 1; the other cells of Tables 2-5 and Fig. 4 are not in the sources of this repository."""
    from model.paper_results import paper_result

    return paper_result(benchmark, experiment, run.name)


class RunExperiment(Stage):
    """Train and evaluate every run x seed of one experiment and write its report.md (and Fig. 4's plots)."""

    experiment = luigi.Parameter(default="table2", description="table2, table3, table4, table5 or fig4")
    seeds = luigi.Parameter(default="", description="comma-separated; empty = [benchmark.<name>] seeds")

    def seed_list(self) -> list[int]:
        return _csv_list(self.seeds or benchmark_setting(self.benchmark, "seeds", "0"), int)

    def evaluations(self) -> list[tuple[Run, int, "luigi.Task"]]:
        """(run, seed, its Evaluate task) for every run and seed; equal runs get the equal task."""
        from pipeline.train import Evaluate

        return [(run, seed, Evaluate(benchmark=self.benchmark, variant=run.variant, seed=seed,
                                     overrides=canonical_overrides(self.benchmark, run.variant, seed, run.overrides)))
                for run in experiment_runs(self.benchmark, self.experiment) for seed in self.seed_list()]

    def requires(self):
        # One task per output folder: two spellings of one run must not be trained twice in one build.
        unique = {}
        for _run, _seed, task in self.evaluations():
            unique.setdefault(task.output_key(), task)
        return list(unique.values())

    def key_material(self) -> dict:
        material = super().key_material()
        material["experiment"] = self.experiment
        material["runs"] = [f"{run.name}/{seed}" for run, seed, _ in self.evaluations()]
        return material

    def output(self):
        return luigi.LocalTarget(str(self.output_dir() / "report.md"))

    def run(self) -> None:
        from model.experiment_report import write_experiment_report

        rows = {}
        for run, seed, task in self.evaluations():
            paper, source = paper_number(self.benchmark, self.experiment, run)
            row = rows.setdefault(run.name, {"name": run.name, "variant": run.variant, "overrides": dict(run.overrides),
                                             "sweep": run.sweep, "value": run.overrides.get(run.sweep),
                                             "paper": paper, "paper_source": source, "eval_dirs": []})
            row["eval_dirs"].append(str(task.output_dir()))
        out = self.output_dir()
        self.write_params_file()
        write_experiment_report(list(rows.values()), out, benchmark=self.benchmark, experiment=self.experiment,
                                title=TITLES[self.experiment])
        latest = out.parent.parent.parent / "reports" / f"{self.benchmark}-{self.experiment}"
        latest.parent.mkdir(parents=True, exist_ok=True)
        tmp = latest.with_name(f".{latest.name}.tmp")
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(out, tmp)
        os.replace(tmp, latest)  # a stable name for the newest report of this experiment
        print(f"\nRunExperiment[{self.benchmark} {self.experiment}]: report at {out / 'report.md'}\n"
              f"  also linked from {latest}/\n")
