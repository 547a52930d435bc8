"""Train(benchmark, variant, seed) and Evaluate: the two-stream I3D adaptation (DESIGN.md steps 4-8).

Training materialises every epoch in its output folder (checkpoint, metrics.csv, memory-bank snapshot),
so a killed Train resumes at its last finished epoch; the task is complete when `training.json` exists.
"""
from __future__ import annotations

import json
from pathlib import Path

import luigi

from pipeline.base import Stage, write_json_atomic
from pipeline.benchmark import data_stages
from pipeline.device import gpu_resources, stage_device
from pipeline.settings import benchmark_setting, require_path

# luigi.cfg keys of [benchmark.<name>] that override the training preset.
TRAIN_OVERRIDES = {"lr": float, "batch_size": int, "epochs": int, "lambda1": float, "lambda2": float,
                   "lambda3": float, "warmup_epochs": int, "bank_size": int, "num_paces": int,
                   "aggregation": str, "da": str, "loss_kind": str, "amp": bool, "num_workers": int}


def training_config(benchmark: str, variant: str, seed: int) -> dict:
    """The full training configuration: preset of the benchmark, then luigi.cfg overrides, then variant."""
    from model.trainer import make_config

    overrides = {}
    for key, cast in TRAIN_OVERRIDES.items():
        value = benchmark_setting(benchmark, key, None, cast)
        if value is not None:
            overrides[key] = value
    preset = benchmark_setting(benchmark, "train_preset", benchmark)
    return make_config(preset=preset, variant=variant, seed=seed, **overrides)


def store_paths(tasks) -> list[str]:
    return [str(t.shard_file()) for t in tasks]


class Train(Stage):
    """One training run. Pretrained I3D weights for real benchmarks come from luigi.cfg (rgb_weights,
    flow_weights); SYN trains from random initialisation by its preset, explicitly."""

    variant = luigi.Parameter(default="FULL", description="SO_RGB, SO_RGB_FLOW, SO_RGB_FLOW_CFB or FULL")
    seed = luigi.IntParameter(default=0)
    key_params = ("variant", "seed", "config")

    @property
    def config(self) -> dict:
        return training_config(self.benchmark, self.variant, self.seed)

    @property
    def resources(self):
        return gpu_resources(self.benchmark)

    def requires(self):
        return data_stages(self.benchmark)

    def output(self):
        return luigi.LocalTarget(str(self.output_dir() / "training.json"))

    def weights(self) -> dict:
        if self.config.get("init") == "random":
            return {}
        what = "Kinetics-pretrained I3D weights ({} stream: pytorch-i3d {})"
        return {"rgb": str(require_path(self.benchmark, "rgb_weights", what.format("RGB", "rgb_imagenet.pt"))),
                "flow": str(require_path(self.benchmark, "flow_weights", what.format("flow", "flow_imagenet.pt")))}

    def run(self) -> None:
        from model.trainer import TrainData, train

        stages = self.requires()
        self.write_params_file()
        data = TrainData(source_frames=store_paths(stages["source_frames"]),
                         source_flows=store_paths(stages["source_flows"]),
                         target_frames=store_paths(stages["target_frames"]),
                         target_flows=store_paths(stages["target_flows"]))

        def on_epoch(epoch: int, epochs: int, metrics: dict) -> None:
            self.set_progress_percentage(round(100.0 * epoch / epochs, 1))
            self.set_status_message(f"epoch {epoch}/{epochs}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))

        result = train(self.config, data, self.output_dir(), device=stage_device(self.benchmark),
                       weights=self.weights(), on_epoch=on_epoch)
        write_json_atomic(Path(self.output().path), result)


class Evaluate(Stage):
    """Per-video predictions and accuracy of a finished Train run on the target videos (JSON)."""

    variant = luigi.Parameter(default="FULL")
    seed = luigi.IntParameter(default=0)

    @property
    def resources(self):
        return gpu_resources(self.benchmark)

    def requires(self):
        return Train(benchmark=self.benchmark, variant=self.variant, seed=self.seed)

    def output(self):
        return luigi.LocalTarget(str(self.output_dir() / "predictions.json"))

    def run(self) -> None:
        from model.evaluate import evaluate_run

        train_task = self.requires()
        stages = data_stages(self.benchmark)
        self.write_params_file()
        evaluate_run(Path(train_task.output_dir()),
                     source_frames=store_paths(stages["source_frames"]),
                     target_frames=store_paths(stages["target_frames"]),
                     target_flows=store_paths(stages["target_flows"]),
                     out_dir=self.output_dir(), device=stage_device(self.benchmark))
