"""Train(benchmark, variant, seed) and Evaluate: the two-stream I3D adaptation (paper Sec. 3-4).

Training materialises every epoch in its output folder (checkpoint, metrics.csv, memory-bank snapshot),
so a killed Train resumes at its last finished epoch; the task is complete when `training.json` exists.
"""
from __future__ import annotations

from pathlib import Path

import luigi

from pipeline.base import Stage, write_json_atomic
from pipeline.benchmark import data_stages
from pipeline.device import gpu_resources, stage_device
from pipeline.settings import benchmark_setting, require_path, resolve_benchmark

# luigi.cfg keys of [benchmark.<name>] that override the training preset (model/trainer.py PRESETS).
TRAIN_OVERRIDES = {"lr": float, "batch_size": int, "epochs": int, "lambda1": float, "lambda2": float,
                   "lambda3": float, "warmup_epochs": int, "bank_size": int, "num_paces": int,
                   "aggregation": str, "bank_labels": str, "bank_clip": str, "da": str, "loss_kind": str,
                   "amp": bool, "num_workers": int, "crop_size": int, "width_mult": float, "eval_batch_size": int,
                   "target_through_streams": bool, "pace_during_warmup": bool, "color_jitter": float,
                   "grayscale_p": float, "min_scale": float, "freeze": str, "rgb_backbone": str, "clip_lr": float}


def training_config(benchmark: str, variant: str, seed: int, task_overrides=None, **extra):
    """The full TrainConfig: preset of the benchmark, then luigi.cfg overrides, then the task's parameters
    (``task_overrides``: the `overrides` parameter of Train / Evaluate, TrainConfig field -> value)."""
    from model.trainer import make_config

    overrides = {}
    for key, cast in TRAIN_OVERRIDES.items():
        value = benchmark_setting(benchmark, key, None, cast)
        if value is not None:
            overrides[key] = value
    overrides.update({k: v for k, v in extra.items() if v not in ("", None)})
    overrides.update(typed_overrides(task_overrides or {}))
    preset = benchmark_setting(benchmark, "train_preset", benchmark)
    cfg = make_config(benchmark=preset, variant=variant, seed=seed, **overrides)
    if cfg.rgb_backbone == "clip" and not cfg.class_names:  # CLIP's prompts name the benchmark's classes
        from data.benchmarks import prompt_class_names

        cfg = make_config(cfg, class_names=prompt_class_names(resolve_benchmark(benchmark)))
    return cfg


def typed_overrides(overrides) -> dict:
    """Task overrides as TrainConfig values, typed like the field's default, so `{"lambda1": 1}` and
    `{"lambda1": 1.0}` give the same config (and the same output key). Unknown names are a user error."""
    import dataclasses

    from model.trainer import TrainConfig

    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    out = {}
    for key, value in dict(overrides).items():
        if key not in fields or key in ("variant", "seed"):
            raise ValueError(f"unknown training override {key!r}: use a TrainConfig field name other than "
                             f"variant and seed ({', '.join(sorted(set(fields) - {'variant', 'seed'}))})")
        default = fields[key]
        if isinstance(default, bool) and isinstance(value, str):
            value = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(default, int) and isinstance(value, float) and value.is_integer():
            value = int(value)
        out[key] = value
    return out


def store_paths(tasks) -> list[str]:
    return [str(t.shard_file()) for t in tasks]


class _TrainingRun(Stage):
    """What Train and WarmUp share: the thread split, GPU resources, weights and the call into the trainer."""

    key_params = ("config", "nproc")  # DDP shards the data differently: a different run

    @property
    def config(self) -> dict:
        from model.trainer import RUN_ONLY_FIELDS

        return {k: v for k, v in self.train_config().to_dict().items() if k not in RUN_ONLY_FIELDS}

    @property
    def nproc(self) -> int:
        """Processes (GPUs) for this run: [benchmark.<name>] train_nproc; > 1 launches torchrun (DDP)."""
        return benchmark_setting(self.benchmark, "train_nproc", 1, int)

    @property
    def threads(self) -> int:
        """torch threads per training process: [benchmark.<name>] train_threads, else this machine's cores
        shared among the tasks Luigi runs at once (the command's --workers, i.e. [core] workers: luigi.build's
        workers argument does not reach core()) and torchrun's processes."""
        from data.flow import default_workers

        configured = benchmark_setting(self.benchmark, "train_threads", 0, int)
        return configured or max(1, default_workers() // (luigi.interface.core().workers * self.nproc))

    @property
    def resources(self):
        return {k: v * self.nproc for k, v in gpu_resources(self.benchmark).items()}

    def weights(self, cfg) -> dict:
        """Kinetics checkpoints from luigi.cfg; checked before any work so a missing file stops at once."""
        found = {}
        if cfg.rgb_backbone == "clip":  # CLIP always loads its weights (its text encoder is the classifier)
            found["clip_weights"] = str(require_path(self.benchmark, "clip_weights",
                                                     "CLIP ViT-B/32 weights (OpenAI's `ViT-B-32.pt`)"))
        if cfg.init == "random":
            return found
        what = "Kinetics-pretrained I3D weights ({} stream, pytorch-i3d `{}`)"
        if cfg.rgb_backbone == "i3d":
            found["rgb_weights"] = str(require_path(self.benchmark, "rgb_weights",
                                                    what.format("RGB", "rgb_imagenet.pt")))
        if cfg.parts["use_flow"]:
            found["flow_weights"] = str(require_path(self.benchmark, "flow_weights",
                                                     what.format("flow", "flow_imagenet.pt")))
        return found

    def run_training(self, **kwargs) -> dict:
        from model.trainer import train

        cfg = self.train_config()
        weights = self.weights(cfg)
        self.write_params_file()

        def on_epoch_end(epoch: int, row: dict) -> None:
            self.progress(epoch, cfg.epochs, f"epoch {epoch}/{cfg.epochs}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))

        stages = data_stages(self.benchmark)
        stores = {name: store_paths(stages[name])
                  for name in ("source_frames", "target_frames", "source_flows", "target_flows")}
        settings = {**cfg.to_dict(), **weights, "device": stage_device(self.benchmark), "threads": self.threads}
        if self.nproc > 1:
            return self.run_torchrun(stores, settings, **kwargs)
        return train(self.output_dir(), config=settings, on_epoch_end=on_epoch_end, **stores, **kwargs)

    def run_torchrun(self, stores: dict, settings: dict, stop_after_epoch=None, warmup_checkpoint=None) -> dict:
        """The same training loop in `nproc` processes under torchrun (DDP; gloo on CPU, nccl on CUDA).
        torchrun restarts every process from the last finished epoch if one fails."""
        import json
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={self.nproc}",
               "-m", "model.trainer", str(self.output_dir())]
        for name, paths in stores.items():
            cmd += [f"--{name.replace('_', '-')}", *paths]
        if stop_after_epoch is not None:
            cmd += ["--stop-after-epoch", str(stop_after_epoch)]
        if warmup_checkpoint is not None:
            cmd += ["--warmup-checkpoint", str(warmup_checkpoint)]
        cmd += ["--set", *(f"{k}={json.dumps(v)}" for k, v in settings.items())]
        self.set_status_message(f"torchrun with {self.nproc} processes")
        subprocess.run(cmd, check=True)
        result = self.output_dir() / ("result.json" if stop_after_epoch is None else "config.json")
        return json.loads(result.read_text())


class WarmUp(_TrainingRun):
    """The warm-up epochs shared by the variants with a flow stream (SO_RGB_FLOW, SO_RGB_FLOW_CFB, FULL when
    no pace loss is trained during warm-up): the SO_RGB_FLOW run stopped after ``warmup_epochs``. Train
    continues from its checkpoint, so the warm-up is trained once per seed, not once per variant; the
    result should be the same as training it again (opt-in: `share_warmup = true`)."""

    seed = luigi.IntParameter(default=0)
    overrides = luigi.DictParameter(default={}, description="training overrides that act during the warm-up")

    def train_config(self):
        return training_config(self.benchmark, "SO_RGB_FLOW", self.seed, task_overrides=self.overrides)

    @property
    def config(self) -> dict:
        from model.trainer import AFTER_WARMUP_FIELDS

        return {k: v for k, v in super().config.items() if k not in AFTER_WARMUP_FIELDS}

    def requires(self):
        return data_stages(self.benchmark)

    def output(self):
        return luigi.LocalTarget(str(self.output_dir() / "warmup.json"))

    def checkpoint(self) -> Path:
        return self.output_dir() / "checkpoint.pt"

    def run(self) -> None:
        cfg = self.train_config()
        summary = self.run_training(stop_after_epoch=cfg.warmup_epochs - 1)
        write_json_atomic(Path(self.output().path), {**summary, "checkpoint": str(self.checkpoint())})


def uses_shared_warmup(cfg, benchmark: str) -> bool:
    """[benchmark.<name>] share_warmup (default false until its equality test exists) and the variant can
    share it."""
    from model.trainer import shares_warmup

    return benchmark_setting(benchmark, "share_warmup", False, bool) and shares_warmup(cfg)


class Train(_TrainingRun):
    """One training run. Pretrained I3D weights for real benchmarks come from luigi.cfg (rgb_weights,
    flow_weights); SYN trains from random initialisation by its preset, explicitly."""

    variant = luigi.Parameter(default="FULL", description="SO_RGB, SO_RGB_FLOW, SO_RGB_FLOW_CFB or FULL")
    seed = luigi.IntParameter(default=0)
    aggregation = luigi.Parameter(default="", description="memory-bank retrieval (Table 3): random, mean, "
                                  "simw_sum, simw_mean_top5, simw_sum_top5, simw_top1, simw_random_top5")
    da = luigi.Parameter(default="", description="DA add-on (Table 4): none, dan, mcc, bnm")
    lambda3 = luigi.FloatParameter(default=-1.0, description="weight of the DA add-on (-1: from the preset)")
    overrides = luigi.DictParameter(default={}, description="TrainConfig fields to set, as JSON, e.g. "
                                    "'{\"lambda1\": 2, \"bank_size\": 30}' (Fig. 4); part of the output key")
    rgb_backbone = luigi.Parameter(default="", description="RGB stream: i3d or clip (Table 5; needs clip_weights "
                                   "in luigi.cfg); empty: the preset's")

    def train_config(self):
        return training_config(self.benchmark, self.variant, self.seed, aggregation=self.aggregation, da=self.da,
                               lambda3=None if self.lambda3 < 0 else self.lambda3, rgb_backbone=self.rgb_backbone,
                               task_overrides=self.overrides)

    def warmup(self) -> WarmUp | None:
        from model.trainer import AFTER_WARMUP_FIELDS

        if uses_shared_warmup(self.train_config(), self.benchmark):
            return WarmUp(benchmark=self.benchmark, seed=self.seed, overrides={
                k: v for k, v in self.overrides.items() if k not in AFTER_WARMUP_FIELDS})
        return None

    def requires(self):
        warmup = self.warmup()
        return {**data_stages(self.benchmark), **({"warmup": warmup} if warmup else {})}

    def key_material(self) -> dict:
        # The shared warm-up gives the same result as training it again: it does not change the key.
        material = super().key_material()
        if self.warmup() is not None:
            material["upstream"] = sorted(set(material["upstream"]) - {self.warmup().output_key()})
        return material

    def output(self):
        return luigi.LocalTarget(str(self.output_dir() / "training.json"))

    def run(self) -> None:
        warmup = self.warmup()
        result = self.run_training(warmup_checkpoint=warmup.checkpoint() if warmup else None)
        write_json_atomic(Path(self.output().path), result)


class Evaluate(Stage):
    """Per-video predictions (CSV), accuracy, per-class accuracy and confusion (metrics.json) and features
    for the t-SNE figure of a finished Train run on the target videos."""

    variant = luigi.Parameter(default="FULL")
    seed = luigi.IntParameter(default=0)
    aggregation = luigi.Parameter(default="")
    da = luigi.Parameter(default="")
    lambda3 = luigi.FloatParameter(default=-1.0)
    overrides = luigi.DictParameter(default={})
    rgb_backbone = luigi.Parameter(default="")

    @property
    def resources(self):
        return gpu_resources(self.benchmark)

    def requires(self):
        return Train(benchmark=self.benchmark, variant=self.variant, seed=self.seed, aggregation=self.aggregation,
                     da=self.da, lambda3=self.lambda3, overrides=self.overrides, rgb_backbone=self.rgb_backbone)

    def output(self):
        return luigi.LocalTarget(str(self.output_dir() / "metrics.json"))

    def run(self) -> None:
        from model.evaluate import evaluate_run

        stages = data_stages(self.benchmark)
        self.write_params_file()
        evaluate_run(self.requires().output_dir(), target_frames=store_paths(stages["target_frames"]),
                     target_flows=store_paths(stages["target_flows"]), out_dir=self.output_dir(),
                     source_frames=store_paths(stages["source_frames"]),
                     device=stage_device(self.benchmark),
                     class_names=resolve_benchmark(self.benchmark).classes)
