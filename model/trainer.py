"""Training: two I3D streams, the Category-aware Flow Memory Bank and video pace prediction (Sec. 3).

One loop, read top to bottom (``train``): build data and models, resume if the output directory holds a
checkpoint, then per epoch

1. reseed everything from (seed, epoch), so a resumed run replays exactly what an uninterrupted one does;
2. after the warm-up epochs (CFB variants): pseudo-label all target videos (32 uniform frames, centre crop,
   summed softmax of both streams, argmax), refresh the flow memory bank (N most confident per class) and
   write its snapshot;
3. train one pass over the source clips: L = L'_c + lambda1 L_loc + lambda2 L_vc (Eq. 6), where each source
   flow is replaced by a clip from the bank of its class (CFB) and L_vc is the pace loss on target clips;
   optionally + lambda3 x a DA add-on (Table 4);
4. evaluate on the target videos (this pass is also the next epoch's pseudo-labelling), and materialise the
   epoch: metrics row, checkpoint (written last; its presence is what makes an epoch finished).

Outputs in ``out_dir``: ``config.json``, ``checkpoint.pt`` (latest finished epoch: models, optimiser,
scheduler, epoch, config, RNG states; load with ``torch.load(..., weights_only=True)``), ``metrics.csv``
(one row per epoch), ``bank/epoch_NNN.h5`` (pseudo labels and bank of each epoch after warm-up) and, when
all epochs are done, ``result.json``.

Single process:  ``train(out_dir, source_frames, target_frames, source_flows=..., target_flows=..., config)``
Several GPUs:    ``torchrun --standalone --nproc_per_node=4 -m model.trainer OUT --source-frames ... ``
Under torchrun (WORLD_SIZE > 1) the same loop initialises the process group (NCCL on CUDA, gloo on CPU),
wraps the streams in DistributedDataParallel, shards every loader by rank, gathers the evaluation, and only
rank 0 writes files. ``batch_size`` is per process.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from data.atomic import atomic_write, atomic_write_text
from model.evaluate import accuracy_summary, predict
from model.heads import VideoPaceHead
from model.i3d import STEM, InceptionI3d, load_i3d
from model.losses import (LOSS_KINDS, bnm_loss, classification_loss, dan_mmd_loss, local_loss, mcc_loss, pace_loss,
                          total_loss)
from model.memory_bank import AGGREGATIONS, FlowMemoryBank, write_bank_snapshot
from model.video_data import EpochSampler, EvalClipDataset, SourceClipDataset, TargetPaceDataset

# The ablation of Table 2, as data: which parts of the method each variant uses.
VARIANTS = {
    "SO_RGB": {"use_flow": False, "use_bank": False, "use_pace": False},           # RGB stream, source only
    "SO_RGB_FLOW": {"use_flow": True, "use_bank": False, "use_pace": False},       # + flow stream (own flows)
    "SO_RGB_FLOW_CFB": {"use_flow": True, "use_bank": True, "use_pace": False},    # + flow memory bank
    "FULL": {"use_flow": True, "use_bank": True, "use_pace": True},                # + video pace prediction
}
DA_KINDS = ("none", "dan", "mcc", "bnm")
BANK_LABELS = ("pseudo", "shuffled", "oracle")

# The real benchmarks' presets; docs/presets.md lists every place where the paper's text and the released
# code differ and which one each preset follows. Paper Sec. 4.1: (lr, batch, epochs, lambda1, lambda2) per
# benchmark; 10 warm-up epochs, N = 60, paces 1..5, 16-frame 224 px clips, 32-frame evaluation, Kinetics weights.
_PAPER_COMMON = {"warmup_epochs": 10, "bank_size": 60, "num_paces": 5, "crop_size": 224, "clip_frames": 16,
                 "eval_frames": 32, "width_mult": 1.0, "temporal_variant": "st_i2v", "init": "pretrained"}
_PAPER_HYPER = {
    "E2H": {"lr": 0.05, "batch_size": 16, "epochs": 60, "lambda1": 1.0, "lambda2": 0.2},
    "B2U": {"lr": 0.1, "batch_size": 32, "epochs": 30, "lambda1": 20.0, "lambda2": 0.001},
    "S2U": {"lr": 0.015, "batch_size": 32, "epochs": 20, "lambda1": 1.0, "lambda2": 0.01},
}
# What produced the published numbers (the released train_with_rgbflow_rpflow_random_videopace.py): the
# loss, its weights and the lrs were tuned together, so the presets take the code's loss with the paper's
# lrs; target clips through both streams and the pace loss during warm-up go with them. Freezing follows
# ST-I2V (whose I3D the released code builds on): everything before MaxPool3d_4a_3x3 runs without gradient.
RELEASED_CODE = {"loss_kind": "bce", "pace_during_warmup": True, "target_through_streams": True,
                 "freeze": "mixed_3c"}
RELEASED_MILESTONES = {"E2H": (30, 40), "B2U": (15, 20), "S2U": (10, 15)}  # MultiStepLR, gamma 0.1
# The paper's text instead: softmax CE (Eq. 2-3), lr x0.1 at 1/2 and 2/3 of the epochs, the first three
# Unit3D blocks frozen, no pace loss and no target clips during warm-up. Preset names "<B>_PAPER_TEXT".
PAPER_TEXT = {"loss_kind": "ce", "pace_during_warmup": False, "target_through_streams": False,
              "freeze": "stem", "lr_milestones": (0.5, 2 / 3)}
# Table 5: CLIP ViT-B/32 replaces the I3D RGB stream (lr 5e-5 for CLIP, batch 8); the flow stream and CFB
# keep the benchmark's settings. The paper gives no milestones for it: its 1/2, 2/3 rule. Names "<B>_CLIP".
CLIP_TABLE5 = {
    "E2H": {"rgb_backbone": "clip", "clip_lr": 5e-5, "batch_size": 8, "epochs": 40, "warmup_epochs": 10,
            "lr_milestones": (0.5, 2 / 3)},
    "S2U": {"rgb_backbone": "clip", "clip_lr": 5e-5, "batch_size": 8, "epochs": 20, "warmup_epochs": 5,
            "lr_milestones": (0.5, 2 / 3)},
}
PAPER_PRESETS = {b: {**_PAPER_COMMON, **hp, **RELEASED_CODE, "lr_milestones": RELEASED_MILESTONES[b]}
                 for b, hp in _PAPER_HYPER.items()}
# SYN on a 2-core CPU in one to three minutes per variant; chosen by measurement (tests/bench/bench_train.py,
# tests/bench/syn_experiment.py). Random initialisation, since SYN ships no weights, so the stem is trained
# too (the paper freezes it only because it is pretrained). Decoded videos are cached in memory (SYN is 5 MB).
# The same preset for every variant.
SYN_PRESET = {
    "init": "random", "width_mult": 0.125, "resize": 37, "crop_size": 32, "temporal_variant": "st_i2v",
    "clip_frames": 16, "eval_frames": 32, "epochs": 20, "warmup_epochs": 10, "batch_size": 8, "lr": 0.002,
    "lr_milestones": (0.75, 0.9), "lambda1": 1.0, "lambda2": 0.5, "bank_size": 8, "num_paces": 4,
    "bn_momentum": 0.1, "dropout": 0.0, "pace_during_warmup": True, "eval_every": 0, "cache_data": True,
    "threads": 1,
}
PRESETS = {**PAPER_PRESETS, **{f"{b}_PAPER_TEXT": {**p, **PAPER_TEXT} for b, p in PAPER_PRESETS.items()},
           **{f"{b}_CLIP": {**PAPER_PRESETS[b], **c} for b, c in CLIP_TABLE5.items()}, "SYN": SYN_PRESET}
# How far freezing goes (``freeze``): the paper's "first three Unit3D blocks", or ST-I2V's no-grad prefix.
FREEZE_LAYERS = {"stem": STEM, "mixed_3c": STEM + ("Mixed_3b", "Mixed_3c")}
RGB_BACKBONES = ("i3d", "clip")


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint as a plain dict)."""

    variant: str = "FULL"
    seed: int = 0
    epochs: int = 20
    warmup_epochs: int = 10
    batch_size: int = 16
    lr: float = 0.015
    momentum: float = 0.9
    optimizer: str = "sgd"                  # "sgd" (paper: momentum 0.9) | "adam" (small from-scratch models)
    weight_decay: float = 1e-4
    lr_milestones: tuple = (0.5, 2 / 3)     # fractions of `epochs` where the lr is multiplied by 0.1
    lambda1: float = 1.0                    # L_loc weight
    lambda2: float = 0.01                   # L_vc weight
    loss_kind: str = "ce"                   # "ce" (paper) | "bce" (released code)
    aggregation: str = "random"             # flow memory bank retrieval (Table 3)
    bank_size: int = 60                     # N (released code: 50)
    bank_labels: str = "pseudo"             # "pseudo" (the method) | "shuffled": CONTROL, the pseudo labels
                                            # randomly permuted over the videos (must not gain) | "oracle":
                                            # LEAKED upper bound, the target's true labels (labelled targets)
    bank_clip: str = "subsample"            # bank flow clip: "subsample" (released code: every 2nd evaluation
                                            # flow) | "window" (consecutive: the temporal step of evaluation)
    num_paces: int = 5                      # C_vp: paces 1..C_vp (released code: 4)
    pace_hidden: int = 0                    # hidden width of the pace head (0: linear)
    pace_during_warmup: bool = False        # released code: True unless -post_vdpace
    target_through_streams: bool = False    # released code: True; every step a target clip (RGB and flow)
                                            # also runs through both streams in train mode (no loss of its
                                            # own): batch norm sees the target before pseudo-labelling
    da: str = "none"                        # DA add-on of Table 4
    lambda3: float = 0.0
    clip_frames: int = 16                   # K, frames per training clip
    eval_frames: int = 32                   # frames per evaluation / pseudo-labelling clip
    crop_size: int = 224
    resize: int | None = None               # short side before cropping (None: frames as stored)
    cache_data: bool = False                # keep decoded, resized videos in memory (small benchmarks)
    min_scale: float = 1.0                  # training augmentation (paper: none of these): multi-scale crop,
    color_jitter: float = 0.0               # colour jitter strength and grayscale probability of the RGB
    grayscale_p: float = 0.0                # training clips (source and target pace clips)
    init: str = "pretrained"                # "pretrained" | "random" (random only when asked for)
    rgb_weights: str = ""
    flow_weights: str = ""
    width_mult: float = 1.0
    temporal_variant: str = "st_i2v"
    bn_momentum: float | None = None        # None keeps I3D's 0.01
    freeze_stem: bool | None = None         # freeze the first layers (`freeze`); None: only pretrained streams
                                            # (the paper freezes Kinetics filters; frozen random ones only lose
                                            # capacity)
    freeze: str = "stem"                    # which: "stem" (paper: Conv3d_1a/2b/2c) | "mixed_3c" (ST-I2V and
                                            # the released code: everything before MaxPool3d_4a_3x3)
    rgb_backbone: str = "i3d"               # "i3d" | "clip": CLIP ViT-B/32 visual encoder, cosine with the
                                            # prompts of `class_names` (Table 5)
    clip_weights: str = ""                  # CLIP checkpoint (OpenAI's ViT-B-32.pt, a state_dict, open_clip's)
    clip_architecture: str = "ViT-B-32"     # what clip_weights must hold ("": whichever CLIP ViT it holds)
    clip_lr: float = 5e-5                   # lr of the CLIP encoder (Table 5); the flow stream keeps `lr`
    class_names: tuple = ()                 # readable class names for CLIP's prompts, in label order
    dropout: float = 0.5                    # before the logits layer (the published I3D: 0.5)
    grad_clamp: float | None = 1.0          # element-wise, as the released code's clip_gradient
    num_classes: int = 0                    # 0: from the labels
    eval_every: int = 1                     # evaluate every k epochs (0: only when needed and at the end)
    eval_batch_size: int = 8
    num_workers: int = 0
    device: str = "cpu"
    amp: bool = False                       # bf16 autocast on CUDA
    threads: int = 0                        # torch.set_num_threads (0: leave as is)

    def __post_init__(self):
        checks = [("variant", VARIANTS), ("da", DA_KINDS), ("aggregation", AGGREGATIONS), ("loss_kind", LOSS_KINDS),
                  ("init", ("pretrained", "random")), ("bank_labels", BANK_LABELS),
                  ("bank_clip", ("subsample", "window")), ("optimizer", ("sgd", "adam")),
                  ("freeze", FREEZE_LAYERS), ("rgb_backbone", RGB_BACKBONES)]
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in 0..epochs, got {self.warmup_epochs} (epochs {self.epochs})")
        self.lr_milestones = tuple(self.lr_milestones)
        self.class_names = tuple(self.class_names)

    @property
    def parts(self) -> dict:
        return VARIANTS[self.variant]

    def milestones(self) -> list[int]:
        return sorted({max(1, int(self.epochs * f)) if f < 1 else int(f) for f in self.lr_milestones})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Fields that do not change a run's result (where it runs, how fast): a resumed run may change them, and the
# pipeline leaves them out of the output key.
RUN_ONLY_FIELDS = {"num_workers", "device", "threads", "eval_batch_size", "rgb_weights", "flow_weights", "cache_data",
                   "clip_weights"}
# Fields that act only after the warm-up: runs that agree on everything else share their warm-up epochs
# (``warmup_checkpoint``), provided no pace loss is trained during the warm-up.
AFTER_WARMUP_FIELDS = {"variant", "aggregation", "bank_size", "bank_labels", "bank_clip", "pace_hidden", "lambda2",
                       "da", "lambda3"}


def shares_warmup(cfg: "TrainConfig") -> bool:
    """Whether a run's warm-up is the shared one (the SO_RGB_FLOW run's first ``warmup_epochs`` epochs)."""
    return (cfg.parts["use_flow"] and cfg.warmup_epochs > 0
            and not (cfg.pace_during_warmup and (cfg.parts["use_pace"] or cfg.da != "none")))


def make_config(config: TrainConfig | dict | None = None, benchmark: str | None = None, **overrides) -> TrainConfig:
    """A TrainConfig from a preset name, a dict or a TrainConfig, plus keyword overrides."""
    values = dict(PRESETS[benchmark]) if benchmark else {}
    if isinstance(config, TrainConfig):
        values.update(config.to_dict())
    elif config:
        values.update(config)
    values.update(overrides)
    return TrainConfig(**values)


# --------------------------------------------------------------------------------------------------------
# Models

def freeze_layers(net: nn.Module, names) -> nn.Module:
    """``requires_grad=False`` on the parameters of the named top-level I3D blocks. Their batch-norm running
    statistics still update in train mode, as under ST-I2V's ``torch.no_grad()`` prefix."""
    for name in names:
        for p in getattr(net, name).parameters():
            p.requires_grad_(False)
    return net


def build_clip_stream(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The CLIP RGB branch of Table 5: CLIP's visual encoder, classes scored by cosine similarity with the
    text embeddings of ``PROMPT`` for each of ``cfg.class_names``. The weights always come from
    ``cfg.clip_weights`` (CLIP without its text encoder has no classifier)."""
    from model.clip import ClipVideoClassifier, load_clip  # open_clip only when CLIP is asked for

    if not cfg.clip_weights or not Path(cfg.clip_weights).is_file():
        raise FileNotFoundError(f"CLIP weights for rgb_backbone='clip' not found at {cfg.clip_weights!r}: set "
                                "`clip_weights` (OpenAI's ViT-B-32.pt or a CLIP state_dict)")
    if len(cfg.class_names) != num_classes:
        raise ValueError(f"rgb_backbone='clip' needs one class name per class for its prompts: class_names has "
                         f"{len(cfg.class_names)} names, the labels {num_classes} classes")
    model = load_clip(cfg.clip_weights, cfg.clip_architecture or None)
    return ClipVideoClassifier(model, list(cfg.class_names))


def build_streams(cfg: TrainConfig, num_classes: int, pretrained: bool | None = None):
    """(rgb, flow or None, pace head or None): I3D streams with C-class logits and frozen first layers (or
    the CLIP RGB branch, ``rgb_backbone='clip'``), pace head on the RGB features.

    ``pretrained`` defaults to ``cfg.init == "pretrained"``; missing weight files stop with a message that
    names the file and the setting.
    """
    pretrained = cfg.init == "pretrained" if pretrained is None else pretrained

    def stream(in_channels, weights, key):
        if pretrained:
            if not weights or not Path(weights).is_file():
                raise FileNotFoundError(
                    f"pretrained I3D weights for the {key.split('_')[0]} stream not found at {weights!r}: set "
                    f"`{key}` (Kinetics checkpoint {'rgb' if in_channels == 3 else 'flow'}_imagenet.pt), or "
                    "init='random' to train from scratch on purpose")
            net = load_i3d(weights, in_channels, num_classes, temporal_variant=cfg.temporal_variant)
            net.dropout.p = cfg.dropout
        else:
            net = InceptionI3d(num_classes, in_channels, cfg.temporal_variant, cfg.width_mult, cfg.dropout)
        if cfg.bn_momentum is not None:
            for m in net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = cfg.bn_momentum
        freeze = pretrained if cfg.freeze_stem is None else cfg.freeze_stem
        return freeze_layers(net, FREEZE_LAYERS[cfg.freeze]) if freeze else net

    rgb = (build_clip_stream(cfg, num_classes) if cfg.rgb_backbone == "clip"
           else stream(3, cfg.rgb_weights, "rgb_weights"))
    flow = stream(2, cfg.flow_weights, "flow_weights") if cfg.parts["use_flow"] else None
    head = VideoPaceHead(rgb.feature_dim, cfg.num_paces, cfg.pace_hidden) if cfg.parts["use_pace"] else None
    return rgb, flow, head


def video_logits(stream: nn.Module, frame_logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """B x C x T logits whose time mean is the stream's video logits (what L_c classifies): the I3D's
    per-frame logits, or for CLIP the cosine of the time-pooled feature (B x C x 1)."""
    pooled = getattr(stream, "video_logits", None)
    return frame_logits if pooled is None else pooled(features)[..., None]


def make_optimizer(cfg: TrainConfig, rgb: nn.Module, params: list) -> torch.optim.Optimizer:
    """SGD (or Adam) over ``params``; a CLIP RGB encoder gets a group of its own at ``clip_lr``."""
    own = {id(p) for p in rgb.parameters()} if cfg.rgb_backbone == "clip" else set()
    groups = [{"params": [p for p in params if id(p) not in own]},
              {"params": [p for p in params if id(p) in own], "lr": cfg.clip_lr}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


class StreamBranch(nn.Module):
    """A stream (and for RGB the pace head) in one module, so that a step is one forward call (DDP needs one
    forward per backward): source clips -> (per-frame logits, features); target clips, in a batch of their
    own (their own batch-norm statistics) -> (per-frame logits, pace logits)."""

    def __init__(self, stream: nn.Module, pace_head: nn.Module | None = None):
        super().__init__()
        self.rgb, self.pace_head = stream, pace_head

    def forward(self, source: torch.Tensor, target: torch.Tensor | None = None):
        logits, features = self.rgb.forward_with_features(source)
        target_logits = pace_logits = None
        if target is not None:
            target_logits, target_features = self.rgb.forward_with_features(target)
            if self.pace_head is not None:
                pace_logits = self.pace_head(target_features)
        return logits, features, target_logits, pace_logits


RGBBranch = StreamBranch


# --------------------------------------------------------------------------------------------------------
# Small helpers for the loop

def seed_everything(seed: int, epoch: int, rank: int = 0) -> int:
    """Reseed python, numpy and torch from (seed, epoch, rank); returns the derived seed."""
    s = int(np.random.SeedSequence((seed, epoch, rank)).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    return s


def rng_states() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def atomic_torch_save(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


METRIC_FIELDS = ["epoch", "lr", "loss", "loss_c", "loss_loc", "loss_vc", "loss_da", "pace_acc", "train_acc",
                 "target_acc", "bank_size", "bank_precision", "pseudo_acc", "seconds", "clips_per_s"]


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_metrics(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, extrasaction="ignore")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in METRIC_FIELDS})
    atomic_write_text(path, buf.getvalue())


def _unwrap(m):
    return m.module if isinstance(m, DDP) else m


def _loader(dataset, sampler, batch_size, cfg: TrainConfig, epoch_seed: int, drop_last: bool, device):
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=cfg.num_workers,
                      drop_last=drop_last, pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(epoch_seed))


def _gather(result: dict, world_size: int) -> dict:
    """All ranks' prediction dicts concatenated and ordered by item index."""
    if world_size > 1:
        parts = [None] * world_size
        dist.all_gather_object(parts, {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in result.items()})
    else:
        parts = [result]
    merged = {}
    for k in parts[0]:
        vals = [p[k] for p in parts]
        merged[k] = torch.cat(vals) if torch.is_tensor(vals[0]) else np.concatenate(vals)
    order, keep = np.unique(np.asarray(merged["index"]), return_index=True)  # DDP padding repeats items
    return {k: (v[torch.as_tensor(keep)] if torch.is_tensor(v) else v[keep]) for k, v in merged.items()}


# --------------------------------------------------------------------------------------------------------
# The loop

def train(out_dir, source_frames, target_frames, source_flows=None, target_flows=None,
          config: TrainConfig | dict | None = None, *, benchmark: str | None = None,
          stop_after_epoch: int | None = None, on_epoch_end=None, log=print, warmup_checkpoint=None,
          **overrides) -> dict:
    """Train one variant; resume from ``out_dir/checkpoint.pt`` when present. Returns the summary that is
    also written to ``result.json`` (plus ``stopped``/``epochs_done`` when ``stop_after_epoch`` ended it).

    ``source_frames`` / ``target_frames``: store files (one path or a list of shard paths) with the frames;
    ``*_flows``: store files with the flows (default: the frame files). ``config``: TrainConfig or dict,
    ``benchmark``: a preset of ``PRESETS`` applied first, ``overrides``: TrainConfig fields.
    ``on_epoch_end(epoch, row)`` is called after an epoch is materialised (a test may raise from it to
    simulate a crash); ``stop_after_epoch=k`` returns cleanly after epoch k. ``warmup_checkpoint``: the
    checkpoint of a run that has done this run's warm-up epochs (``shares_warmup``; the pipeline's
    ``WarmUp`` stage), to continue from instead of training them again; the result is the same.
    """
    cfg = make_config(config, benchmark, **overrides)
    parts = cfg.parts
    out_dir = Path(out_dir)

    # -- processes and devices (torchrun sets WORLD_SIZE, RANK, LOCAL_RANK) --------------------------------
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world_size > 1
    device = torch.device(cfg.device)
    if distributed:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank = dist.get_rank()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    else:
        rank = 0
    master = rank == 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")
    if master:
        (out_dir / "bank").mkdir(parents=True, exist_ok=True)

    # -- data ----------------------------------------------------------------------------------------------
    augment = {"min_scale": cfg.min_scale, "color": cfg.color_jitter, "grayscale_p": cfg.grayscale_p}
    source = SourceClipDataset(source_frames, source_flows, cfg.clip_frames, cfg.crop_size,
                               with_flow=parts["use_flow"], seed=cfg.seed, resize=cfg.resize,
                               cache=cfg.cache_data, **augment)
    target_eval = EvalClipDataset(target_frames, target_flows, cfg.eval_frames, cfg.crop_size,
                                  with_flow=parts["use_flow"], resize=cfg.resize, cache=cfg.cache_data)
    uses_target_clips = parts["use_pace"] or cfg.da != "none" or cfg.target_through_streams
    target_flow_paths = (target_flows or target_frames) if cfg.target_through_streams and parts["use_flow"] else None
    target_clips = (TargetPaceDataset(target_frames, cfg.clip_frames, cfg.crop_size,
                                      cfg.num_paces if parts["use_pace"] or cfg.target_through_streams else 1,
                                      seed=cfg.seed, resize=cfg.resize, cache=cfg.cache_data,
                                      flow_paths=target_flow_paths, **augment)
                    if uses_target_clips else None)
    num_classes = cfg.num_classes or int(max(source.labels.max(), target_eval.labels.max())) + 1
    target_labels = target_eval.labels
    labelled = bool((target_labels >= 0).all())
    if cfg.bank_labels == "oracle" and not labelled:
        raise ValueError("bank_labels='oracle' fills the bank with the target's true labels: every target video "
                         "needs a label (it is a diagnostic for labelled benchmarks such as SYN)")
    per_rank = math.ceil(len(source) / world_size)
    drop_last = per_rank >= cfg.batch_size
    steps = per_rank // cfg.batch_size if drop_last else 1
    source_sampler = EpochSampler(len(source), seed=cfg.seed, rank=rank, world_size=world_size)
    target_sampler = (EpochSampler(len(target_clips), steps * cfg.batch_size * world_size, seed=cfg.seed + 7919,
                                   rank=rank, world_size=world_size) if target_clips else None)
    eval_sampler = EpochSampler(len(target_eval), len(target_eval), shuffle=False, rank=rank, world_size=world_size)

    # -- models, optimiser, schedule -------------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    rgb, flow, pace_head = build_streams(cfg, num_classes)
    rgb_branch = StreamBranch(rgb, pace_head).to(device)
    flow = flow.to(device) if flow is not None else None
    flow_branch = StreamBranch(flow) if flow is not None else None
    params = [p for m in (rgb_branch, flow) if m is not None for p in m.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, rgb, params)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestones(), gamma=0.1)
    bank = FlowMemoryBank(num_classes, cfg.bank_size, cfg.aggregation) if parts["use_bank"] else None

    # -- resume ------------------------------------------------------------------------------------------------
    ckpt_path, metrics_path = out_dir / "checkpoint.pt", out_dir / "metrics.csv"
    start_epoch = 0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        changed = sorted(k for k, v in cfg.to_dict().items()
                         if k not in RUN_ONLY_FIELDS and _plain(ckpt["config"].get(k)) != _plain(v))
        if changed:
            raise ValueError(f"{ckpt_path}: the run was started with a different configuration ({', '.join(changed)}"
                             f"); use a new output directory or the same settings")
        rgb.load_state_dict(ckpt["rgb"])
        if flow is not None:
            flow.load_state_dict(ckpt["flow"])
        if pace_head is not None:
            pace_head.load_state_dict(ckpt["pace_head"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch = ckpt["epoch"] + 1
        if log and master:
            log(f"resuming {out_dir} after epoch {ckpt['epoch']}")
    elif warmup_checkpoint is not None:
        start_epoch = _start_from_warmup(Path(warmup_checkpoint), cfg, rgb, flow, optimizer, scheduler, device)
        shutil.copyfile(Path(warmup_checkpoint).parent / "metrics.csv", metrics_path)
        if log and master:
            log(f"{out_dir}: continuing from the shared warm-up {warmup_checkpoint}")
    rows = [r for r in read_metrics(metrics_path) if int(r["epoch"]) < start_epoch]
    if master:
        atomic_write_text(out_dir / "config.json", json.dumps(cfg.to_dict(), indent=1, sort_keys=True))
    if start_epoch >= cfg.epochs and (out_dir / "result.json").exists():
        return json.loads((out_dir / "result.json").read_text())

    if distributed:
        rgb_branch = DDP(rgb_branch, device_ids=[device.index] if device.type == "cuda" else None,
                         find_unused_parameters=pace_head is not None)
        flow_branch = (DDP(flow_branch, device_ids=[device.index] if device.type == "cuda" else None)
                       if flow is not None else None)

    def evaluate_target():
        # A generator of its own: a DataLoader iterator draws a seed, which must not touch the global RNG.
        eval_loader = DataLoader(target_eval, batch_size=cfg.eval_batch_size, sampler=eval_sampler,
                                 num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                                 generator=torch.Generator().manual_seed(0))
        with autocast:
            out = predict(rgb, flow, eval_loader, device)
        return _gather(out, world_size)

    last_eval = None  # predictions of the current weights, reused as the next epoch's pseudo labels
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        bank_rng = np.random.default_rng((cfg.seed, epoch, rank, 31337))
        after_warmup = epoch >= cfg.warmup_epochs
        bank_active = bank is not None and after_warmup
        adapt_on = after_warmup or cfg.pace_during_warmup  # pace and DA losses
        target_on = target_clips is not None and (adapt_on or cfg.target_through_streams)
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}

        # 1) pseudo-label the target videos and refresh the Category-aware Flow Memory Bank
        if bank_active:
            if last_eval is None:
                last_eval = evaluate_target()
            # oracle: what the bank gives when every pseudo label is right (separates CFB from label quality)
            # shuffled: a control that keeps the classes' counts but breaks which video has which label
            bank_classes = (target_labels if cfg.bank_labels == "oracle" else
                            np.random.default_rng((cfg.seed, epoch, 4242)).permutation(last_eval["pred"])
                            if cfg.bank_labels == "shuffled" else last_eval["pred"])
            bank.refresh(bank_classes, last_eval["confidence"], last_eval["features"])
            members = bank.member_indices()
            bank.set_flows(members, [target_eval.bank_flow_clip(int(i), cfg.clip_frames, cfg.bank_clip)
                                     .to(device, torch.float16) for i in members])
            row["bank_size"] = bank.size
            if labelled:
                in_bank = bank.in_bank()
                row["pseudo_acc"] = float((last_eval["pred"] == target_labels).mean())
                row["bank_precision"] = (float((bank_classes[in_bank] == target_labels[in_bank]).mean())
                                         if in_bank.any() else None)
            if master:
                write_bank_snapshot(out_dir / "bank" / f"epoch_{epoch:03d}.h5",
                                    bank.snapshot(target_eval.ids, target_labels),
                                    {"epoch": epoch, "capacity": cfg.bank_size, "aggregation": cfg.aggregation,
                                     "bank_labels": cfg.bank_labels})

        # 2) one pass over the source clips
        epoch_seed = seed_everything(cfg.seed, epoch, rank)
        rgb_branch.train()
        if flow is not None:
            flow_branch.train()
        for sampler, ds in ((source_sampler, source), (target_sampler, target_clips)):
            if sampler is not None:
                sampler.set_epoch(epoch)
                ds.set_epoch(epoch)
        source_loader = _loader(source, source_sampler, cfg.batch_size, cfg, epoch_seed, drop_last, device)
        target_iter = (iter(_loader(target_clips, target_sampler, cfg.batch_size, cfg, epoch_seed + 1, True, device))
                       if target_on else None)
        sums = {k: 0.0 for k in ("loss", "loss_c", "loss_loc", "loss_vc", "loss_da", "pace_acc", "train_acc")}
        n_steps = n_clips = 0
        for batch in source_loader:
            labels = batch["label"].to(device, non_blocking=True)
            rgb_in = batch["rgb"].to(device, non_blocking=True)
            target_batch = next(target_iter) if target_iter is not None else None
            target_in = target_batch["rgb"].to(device, non_blocking=True) if target_batch is not None else None
            with autocast:
                rgb_logits, rgb_features, target_logits, pace_logits = rgb_branch(rgb_in, target_in)
                flow_logits = None
                if flow is not None:
                    flow_in = batch["flow"].to(device, non_blocking=True)
                    if bank_active:  # L'_c: the flow of a class-c source sample comes from the bank of class c
                        flow_in = bank.retrieve(labels, flow_in, rgb_features.detach().float().mean(-1), bank_rng)
                    target_flow = (target_batch["flow"].to(device, non_blocking=True)
                                   if target_batch is not None and "flow" in target_batch else None)
                    flow_logits = flow_branch(flow_in, target_flow)[0]
            rgb_video = video_logits(rgb, rgb_logits, rgb_features)
            l_loc = local_loss(rgb_logits, labels, cfg.clip_frames, cfg.loss_kind)
            l_c = classification_loss(rgb_video, flow_logits, labels, cfg.loss_kind)
            l_vc = torch.zeros((), device=device)
            if pace_logits is not None and adapt_on:
                pace_labels = target_batch["pace_label"].to(device)
                l_vc = pace_loss(pace_logits, pace_labels)
                sums["pace_acc"] += float((pace_logits.argmax(1) == pace_labels).float().mean())
            l_da = torch.zeros((), device=device)
            if target_logits is not None and cfg.da != "none" and adapt_on:
                t_mean = target_logits.float().mean(-1)
                l_da = (dan_mmd_loss(rgb_logits.float().mean(-1), t_mean) if cfg.da == "dan"
                        else mcc_loss(t_mean) if cfg.da == "mcc" else bnm_loss(t_mean))
            loss = total_loss(l_c, l_loc, l_vc, cfg.lambda1, cfg.lambda2) + cfg.lambda3 * l_da

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clamp:
                for p in params:
                    if p.grad is not None:
                        p.grad.clamp_(-cfg.grad_clamp, cfg.grad_clamp)
            optimizer.step()

            n_steps += 1
            n_clips += len(labels)
            for k, v in (("loss", loss), ("loss_c", l_c), ("loss_loc", l_loc), ("loss_vc", l_vc), ("loss_da", l_da)):
                sums[k] += float(v.detach())
            sums["train_acc"] += float((rgb_video.detach().float().mean(-1).argmax(1) == labels).float().mean())
        scheduler.step()
        row.update({k: v / max(n_steps, 1) for k, v in sums.items()})
        if not (parts["use_pace"] and target_on and adapt_on):
            row["pace_acc"] = None

        # 3) evaluate on the target videos (the next epoch's pseudo labels)
        last = epoch == cfg.epochs - 1
        needs_bank = bank is not None and epoch + 1 >= cfg.warmup_epochs
        if last or needs_bank or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
            last_eval = evaluate_target()
            if labelled:
                row["target_acc"] = float((last_eval["pred"] == target_labels).mean())
        else:
            last_eval = None
        row["seconds"] = round(time.time() - t0, 2)
        row["clips_per_s"] = round(n_clips * world_size / max(row["seconds"], 1e-9), 2)

        # 4) materialise the epoch: metrics, then the checkpoint (its presence marks the epoch finished)
        rows.append(row)
        if master:
            write_metrics(metrics_path, rows)
            atomic_torch_save({
                "rgb": _unwrap(rgb_branch).rgb.state_dict(),
                "flow": flow.state_dict() if flow is not None else None,
                "pace_head": pace_head.state_dict() if pace_head is not None else None,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "num_classes": num_classes, "config": cfg.to_dict(), "rng": rng_states(),
            }, ckpt_path)
        if distributed:
            dist.barrier()
        if log and master:
            acc = row.get("target_acc")
            log(f"[{cfg.variant} seed {cfg.seed}] epoch {epoch + 1}/{cfg.epochs} loss {row['loss']:.3f} "
                f"(c {row['loss_c']:.3f} loc {row['loss_loc']:.3f} vc {row['loss_vc']:.3f}) "
                f"train acc {row['train_acc']:.3f} target acc {'-' if acc is None else f'{acc:.3f}'} "
                f"bank {row.get('bank_size', '-')} {row['seconds']:.1f}s")
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        if stop_after_epoch is not None and epoch >= stop_after_epoch and not last:
            return {"stopped": True, "epochs_done": epoch + 1, "out_dir": str(out_dir)}

    if last_eval is None:  # resumed after the last checkpoint but before result.json was written
        last_eval = evaluate_target()
    scores = accuracy_summary(last_eval["pred"], target_labels, num_classes) if labelled else None
    summary = {"variant": cfg.variant, "seed": cfg.seed, "epochs": cfg.epochs, "num_classes": num_classes,
               "accuracy": scores["accuracy"] if scores else None, "out_dir": str(out_dir), "config": cfg.to_dict()}
    if scores:
        summary["per_class_accuracy"] = scores["per_class_accuracy"].tolist()
    if master:
        atomic_write_text(out_dir / "result.json", json.dumps(summary, indent=1))
    return summary


def _start_from_warmup(path: Path, cfg: TrainConfig, rgb, flow, optimizer, scheduler, device) -> int:
    """Load a shared warm-up checkpoint into a fresh run; returns the first epoch left to train. The streams,
    their optimiser state (momentum) and the schedule continue; a pace head starts fresh, as it would."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not shares_warmup(cfg):
        raise ValueError(f"{path}: variant {cfg.variant} does not share the warm-up (it trains a pace or DA loss "
                         "during warm-up, or has no flow stream)")
    changed = sorted(k for k, v in cfg.to_dict().items() if k not in RUN_ONLY_FIELDS | AFTER_WARMUP_FIELDS
                     and _plain(ckpt["config"].get(k)) != _plain(v))
    if changed or ckpt["epoch"] != cfg.warmup_epochs - 1:
        raise ValueError(f"{path}: not this run's warm-up (epoch {ckpt['epoch']} of {cfg.warmup_epochs} warm-up "
                         f"epochs; different settings: {', '.join(changed) or 'none'})")
    rgb.load_state_dict(ckpt["rgb"])
    flow.load_state_dict(ckpt["flow"])
    saved = ckpt["optimizer"]
    own = {id(p) for m in (rgb, flow) for p in m.parameters()}  # the warm-up's order: without a pace head
    streams = [p for g in optimizer.param_groups for p in g["params"] if id(p) in own]
    for i, p in enumerate(streams):
        if i in saved["state"]:
            optimizer.state[p] = {k: v.to(device) if torch.is_tensor(v) else v for k, v in saved["state"][i].items()}
    scheduler.load_state_dict(ckpt["scheduler"])
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"]):
        group["lr"] = saved_group["lr"]
    return ckpt["epoch"] + 1


def _plain(v):
    """Config values compared after a JSON round trip (tuples vs lists)."""
    return json.loads(json.dumps(v))


def load_checkpoint(path, device="cpu") -> dict:
    """A training checkpoint, loaded safely (``weights_only=True``)."""
    return torch.load(path, map_location=device, weights_only=True)


# --------------------------------------------------------------------------------------------------------
# Command line (also the torchrun entry point)

def parse_overrides(pairs) -> dict:
    """``["lr=0.01", "variant=FULL"]`` -> ``{"lr": 0.01, "variant": "FULL"}``: JSON values, else strings."""
    overrides = {}
    for kv in pairs:
        k, v = kv.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    return overrides


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--source-frames", nargs="+", required=True)
    p.add_argument("--target-frames", nargs="+", required=True)
    p.add_argument("--source-flows", nargs="+")
    p.add_argument("--target-flows", nargs="+")
    p.add_argument("--benchmark", choices=sorted(PRESETS))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides (JSON values)")
    p.add_argument("--stop-after-epoch", type=int, help="return after this epoch (a shared warm-up)")
    p.add_argument("--warmup-checkpoint", help="continue from this shared warm-up checkpoint")
    args = p.parse_args(argv)
    overrides = parse_overrides(args.set)
    train(args.out_dir, args.source_frames, args.target_frames, args.source_flows, args.target_flows,
          benchmark=args.benchmark, stop_after_epoch=args.stop_after_epoch,
          warmup_checkpoint=args.warmup_checkpoint, **overrides)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
