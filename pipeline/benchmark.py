"""PrepareData (every data stage of a benchmark) and RunBenchmark (variants x seeds -> report)."""
from __future__ import annotations

import os

import luigi

from pipeline.base import Stage
from pipeline.decode import DecodeTargetVideos
from pipeline.flow import ExtractFlow
from pipeline.settings import benchmark_setting
from pipeline.synthesis import SynthesizeSourceVideos


def data_stages(benchmark: str) -> dict[str, list]:
    """All shards of the four stores training reads: source frames and flows, target frames and flows."""
    n_src = benchmark_setting(benchmark, "source_shards", 1, int)
    n_tgt = benchmark_setting(benchmark, "target_shards", 1, int)
    return {
        "source_frames": [SynthesizeSourceVideos(benchmark=benchmark, shard=i) for i in range(n_src)],
        "source_flows": [ExtractFlow(benchmark=benchmark, domain="source", shard=i) for i in range(n_src)],
        "target_frames": [DecodeTargetVideos(benchmark=benchmark, shard=i) for i in range(n_tgt)],
        "target_flows": [ExtractFlow(benchmark=benchmark, domain="target", shard=i) for i in range(n_tgt)],
    }


class PrepareData(luigi.WrapperTask):
    """Every data stage of a benchmark (index, depth, synthesis, decoding, flow), without training."""

    benchmark = luigi.Parameter(default="SYN")

    def requires(self):
        return data_stages(self.benchmark)


def _csv_list(value: str, cast=str) -> list:
    return [cast(v.strip()) for v in str(value).split(",") if v.strip()]


class RunBenchmark(Stage):
    """Train and evaluate every variant x seed of a benchmark and write report.md, results.csv and figures."""

    variants = luigi.Parameter(default="", description="comma-separated; empty = [benchmark.<name>] variants")
    seeds = luigi.Parameter(default="", description="comma-separated; empty = [benchmark.<name>] seeds")
    aggregation = luigi.Parameter(default="", description="memory-bank retrieval mode for every run (Table 3)")
    da = luigi.Parameter(default="", description="DA add-on for every run (Table 4): none, dan, mcc, bnm")
    lambda3 = luigi.FloatParameter(default=-1.0, description="DA add-on weight (-1: from the preset)")

    def variant_list(self) -> list[str]:
        return _csv_list(self.variants or benchmark_setting(self.benchmark, "variants", "SO_RGB,SO_RGB_FLOW,"
                                                                              "SO_RGB_FLOW_CFB,FULL"))

    def seed_list(self) -> list[int]:
        return _csv_list(self.seeds or benchmark_setting(self.benchmark, "seeds", "0"), int)

    def requires(self):
        from pipeline.train import Evaluate

        return {(v, s): Evaluate(benchmark=self.benchmark, variant=v, seed=s, aggregation=self.aggregation,
                                 da=self.da, lambda3=self.lambda3)
                for v in self.variant_list() for s in self.seed_list()}

    def key_material(self) -> dict:
        material = super().key_material()
        material["runs"] = [f"{v}/{s}" for v in self.variant_list() for s in self.seed_list()]
        return material

    def output(self):
        return luigi.LocalTarget(str(self.output_dir() / "report.md"))

    def run(self) -> None:
        from model.report import write_report
        from pipeline.settings import resolve_benchmark

        eval_dirs = [task.output_dir() for task in self.requires().values()]
        out = self.output_dir()
        self.write_params_file()
        write_report(eval_dirs, out, benchmark=self.benchmark, class_names=resolve_benchmark(self.benchmark).classes)
        latest = out.parent.parent.parent / "reports" / self.benchmark
        latest.parent.mkdir(parents=True, exist_ok=True)
        tmp = latest.with_name(f".{latest.name}.tmp")
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(out, tmp)
        os.replace(tmp, latest)  # a stable name for the newest report of this benchmark
        print(f"\nRunBenchmark[{self.benchmark}]: report at {out / 'report.md'}\n"
              f"  also linked from {latest}/ (results.csv, confusion-matrix and t-SNE PNGs)\n")
