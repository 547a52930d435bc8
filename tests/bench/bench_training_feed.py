"""The training feed: end-to-end SO_RGB_FLOW training throughput against the model alone, in one process.

    python -m tests.bench.bench_training_feed --size 112 --width 0.125 --batch 8 --workers 0 1 2   # CPU
    python -m tests.bench.bench_training_feed --device cuda --size 224 --batch 32 --bf16 --channels-last \\
        --workers 0 4 8 12 --steps 30 --json "$OUT/feed.json"                                       # GPU

It writes (or, with --workdir holding them, reuses) two HDF5 stores with the project's own writer, as the
pipeline does: ``frames.h5`` (16 JPEG RGB frames per item, stored at the short side 256/224 of the crop,
340/256 wide, the decode stage's shape) and ``flows.h5`` (15 quantised JPEG flows per item), with labels.
The frames are a smooth random texture moving by a few pixels a frame, so that JPEG sizes and decode times
are those of video frames rather than of noise. Then, in one process:

- model: the trainer's SO_RGB_FLOW step (both I3D streams from ``build_streams``, forward, L_c + lambda1
  L_loc, backward, element-wise gradient clamp, SGD) on synthetic clips already on the device;
- feed: the trainer's own DataLoader (``model.trainer._loader``) over ``SourceClipDataset`` on those
  stores (HDF5 reads, checksums, JPEG decode, random crop and flip, batching, pinned memory on CUDA) and
  the copy to the device, for each ``--workers`` count;
- end to end: the feed and the step together, as the training loop runs them.

Rates are source clips per second (each clip: 16 RGB frames and 16 flows). The ratios divide by the model
rate of the same process: feed / model >= 1 means the feed keeps up. On CUDA the GPU's utilisation is
sampled every 0.1 s during the model and end-to-end phases (``torch.cuda.utilization`` through NVML,
else ``nvidia-smi``). On CPU the feed's workers and the model share the same cores, so end to end is at
best about model x feed / (model + feed) there; the GPU figure is the one the issue's goal is about.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data.store import ShardWriter, is_complete  # noqa: E402
from model.losses import classification_loss, local_loss, total_loss  # noqa: E402
from model.trainer import StreamBranch, TrainConfig, _loader, build_streams  # noqa: E402
from model.video_data import EpochSampler, SourceClipDataset  # noqa: E402

CLIP_FRAMES = 16


# -- stores ------------------------------------------------------------------------------------------------

def stored_shape(size: int) -> tuple[int, int]:
    """Frames as the decode stage stores them for a ``size`` crop: short side 256/224 of it, 340/256 wide."""
    h = round(size * 256 / 224)
    return h, round(h * 340 / 256)


def synthetic_video(rng: np.random.Generator, h: int, w: int, frames: int = CLIP_FRAMES):
    """A smooth random texture moving (dx, dy) pixels per frame: RGB uint8 (T, H, W, 3) and its flow
    float32 (T-1, H, W, 2), plus a little smooth noise in the flow, as TV-L1 gives."""
    dx, dy = rng.uniform(-3, 3, 2)
    pad = int(math.ceil(3 * frames)) + 2
    coarse = rng.uniform(0, 255, (h // 8 + 8, w // 8 + 8, 3)).astype(np.float32)
    texture = cv2.resize(coarse, (w + 2 * pad, h + 2 * pad), interpolation=cv2.INTER_CUBIC)
    texture += rng.normal(0, 6, texture.shape).astype(np.float32)  # fine detail, as in real frames
    video = np.empty((frames, h, w, 3), np.uint8)
    for t in range(frames):
        m = np.float32([[1, 0, pad - dx * t], [0, 1, pad - dy * t]])
        video[t] = np.clip(cv2.warpAffine(texture, m, (w, h), flags=cv2.INTER_LINEAR), 0, 255)
    noise = cv2.resize(rng.normal(0, 0.5, (h // 16 + 2, w // 16 + 2, 2)).astype(np.float32), (w, h))
    flow = np.broadcast_to(np.float32([dx, dy]) + noise, (frames - 1, h, w, 2)).copy()
    return video, flow


def make_stores(workdir: Path, items: int, size: int, classes: int = 12, seed: int = 0) -> tuple[Path, Path]:
    """``workdir/frames.h5`` and ``workdir/flows.h5`` for ``items`` videos (kept when already complete)."""
    frames_path, flows_path = workdir / "frames.h5", workdir / "flows.h5"
    if is_complete(frames_path) and is_complete(flows_path):
        return frames_path, flows_path
    h, w = stored_shape(size)
    rng = np.random.default_rng(seed)
    params = {"bench": "training_feed", "size": size, "items": items}
    with ShardWriter(frames_path, "SynthesizeSourceVideos", "BENCH", params) as fw, \
            ShardWriter(flows_path, "ExtractFlow", "BENCH", params) as ow:
        for i in range(items):
            video, flow = synthetic_video(rng, h, w)
            item_id, label = f"bench/{i:05d}", i % classes
            fw.add(item_id, label=label, frames=video)
            ow.add(item_id, label=label, flow=flow)
    return frames_path, flows_path


# -- GPU utilisation ---------------------------------------------------------------------------------------

class UtilisationSampler:
    """Mean GPU utilisation (%) while active: ``torch.cuda.utilization`` (NVML) every ``period`` s, or
    ``nvidia-smi`` where NVML is not importable. ``mean`` is None when neither works (or on CPU)."""

    def __init__(self, device: torch.device, period: float = 0.1):
        self.device, self.period = device, period
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = None
        self._query = self._pick_query() if device.type == "cuda" else None

    def _pick_query(self):
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        try:
            torch.cuda.utilization(index)
            return lambda: float(torch.cuda.utilization(index))
        except Exception:  # noqa: BLE001 - pynvml missing or NVML unusable: fall back to nvidia-smi
            pass

        def smi():
            out = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
            return float(out.stdout.strip().splitlines()[0])
        try:
            smi()
            return smi
        except Exception:  # noqa: BLE001 - no nvidia-smi either: report no utilisation
            return None

    def _run(self):
        while not self._stop.wait(self.period):
            try:
                self.samples.append(self._query())
            except Exception:  # noqa: BLE001 - a failed sample is skipped, not fatal to the benchmark
                pass

    def __enter__(self):
        if self._query is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


# -- the step ----------------------------------------------------------------------------------------------

class SoRgbFlowStep:
    """The trainer's SO_RGB_FLOW training step: RGB and flow stream on the source clip and its own flow,
    L = L'_c + lambda1 L_loc (Eq. 6 without L_vc), backward, gradient clamp, SGD."""

    def __init__(self, cfg: TrainConfig, num_classes: int, device: torch.device, channels_last: bool):
        torch.manual_seed(cfg.seed)
        rgb, flow, _ = build_streams(cfg, num_classes, pretrained=False)
        self.rgb_branch, self.flow_branch = StreamBranch(rgb).to(device), StreamBranch(flow).to(device)
        self.fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
        if channels_last:
            self.rgb_branch.to(memory_format=self.fmt)
            self.flow_branch.to(memory_format=self.fmt)
        self.params = [p for m in (self.rgb_branch, self.flow_branch) for p in m.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")
        self.cfg, self.device = cfg, device
        self.rgb_branch.train()
        self.flow_branch.train()

    def to_device(self, batch: dict):
        """Labels, RGB and flow of a batch on the device (asynchronous from pinned memory)."""
        put = lambda x: x.to(self.device, non_blocking=True).contiguous(memory_format=self.fmt)  # noqa: E731
        return batch["label"].to(self.device, non_blocking=True), put(batch["rgb"]), put(batch["flow"])

    def __call__(self, labels, rgb_in, flow_in) -> torch.Tensor:
        cfg = self.cfg
        with self.autocast:
            rgb_logits = self.rgb_branch(rgb_in)[0]
            flow_logits = self.flow_branch(flow_in)[0]
        loss = total_loss(classification_loss(rgb_logits, flow_logits, labels, cfg.loss_kind),
                          local_loss(rgb_logits, labels, cfg.clip_frames, cfg.loss_kind),
                          torch.zeros((), device=self.device), cfg.lambda1, cfg.lambda2)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for p in self.params:
            if p.grad is not None:
                p.grad.clamp_(-cfg.grad_clamp, cfg.grad_clamp)
        self.optimizer.step()
        return loss.detach()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the three measurements --------------------------------------------------------------------------------

def measure_model(step: SoRgbFlowStep, batch: int, size: int, num_classes: int, steps: int, warmup: int):
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    rgb = torch.rand(batch, 3, CLIP_FRAMES, size, size, generator=g) * 2 - 1
    flow = torch.rand(batch, 2, CLIP_FRAMES, size, size, generator=g) * 2 - 1
    inputs = step.to_device({"label": labels, "rgb": rgb, "flow": flow})
    for _ in range(warmup):
        step(*inputs)
    _sync(step.device)
    with UtilisationSampler(step.device) as util:
        t = time.perf_counter()
        for _ in range(steps):
            step(*inputs)
        _sync(step.device)
        seconds = time.perf_counter() - t
    return batch * steps / seconds, util.mean


def _batches(dataset, cfg: TrainConfig, device, epoch: int, count: int):
    """``count`` batches of the trainer's source loader for ``epoch`` (more epochs when one is too short)."""
    done = 0
    while done < count:
        sampler = EpochSampler(len(dataset), seed=cfg.seed)
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        for batch in _loader(dataset, sampler, cfg.batch_size, cfg, 1000 + epoch, True, device):
            yield batch
            done += 1
            if done == count:
                return
        epoch += 1


def measure_feed(dataset, cfg: TrainConfig, step: SoRgbFlowStep, steps: int, warmup: int, train: bool):
    """Clips/s of the feed alone (``train=False``: batches copied to the device) or end to end. The first
    batches (worker start-up, first HDF5 opens, and the burst of the first batch of every worker, which
    all start together) are not timed: ``warmup``, and at least workers + 1."""
    warmup = max(warmup, cfg.num_workers + 1)
    batches = _batches(dataset, cfg, step.device, 0, warmup + steps)
    for _ in range(warmup):
        inputs = step.to_device(next(batches))
        if train:
            step(*inputs)
    _sync(step.device)
    with UtilisationSampler(step.device) as util:
        t = time.perf_counter()
        for batch in batches:
            inputs = step.to_device(batch)
            if train:
                step(*inputs)
        _sync(step.device)
        seconds = time.perf_counter() - t
    return cfg.batch_size * steps / seconds, util.mean


# -- command line ------------------------------------------------------------------------------------------

def _fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=112, help="crop side (stored frames: 256/224 of it)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--channels-last", action="store_true", help="channels_last_3d models and inputs")
    p.add_argument("--steps", type=int, default=6, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    p.add_argument("--width", type=float, default=1.0, help="I3D width multiplier (1.0: the paper's I3D)")
    p.add_argument("--items", type=int, help="videos in the stores (default: enough for the longest run)")
    p.add_argument("--workdir", help="directory for (or with) frames.h5 and flows.h5 (default: a temp dir)")
    p.add_argument("--threads", type=int, default=0, help="torch threads in the main process (0: as is)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    num_classes = 12
    items = args.items or max(64, args.batch * (args.steps + max([args.warmup, *(w + 1 for w in args.workers)])))
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench_feed_")
    workdir = Path(args.workdir or tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    frames_path, flows_path = make_stores(workdir, items, args.size, num_classes)
    made = time.perf_counter() - t

    cfg = TrainConfig(variant="SO_RGB_FLOW", init="random", width_mult=args.width, crop_size=args.size,
                      clip_frames=CLIP_FRAMES, batch_size=args.batch, amp=args.bf16, device=args.device)
    dataset = SourceClipDataset(str(frames_path), str(flows_path), CLIP_FRAMES, args.size, seed=cfg.seed)
    step = SoRgbFlowStep(cfg, num_classes, device, args.channels_last)
    model_cps, model_util = measure_model(step, args.batch, args.size, num_classes, args.steps, args.warmup)
    rows = []
    for workers in args.workers:
        wcfg = TrainConfig(**{**cfg.to_dict(), "num_workers": workers})
        feed_cps, _ = measure_feed(dataset, wcfg, step, args.steps, args.warmup, train=False)
        e2e_cps, e2e_util = measure_feed(dataset, wcfg, step, args.steps, args.warmup, train=True)
        rows.append({"workers": workers, "feed": feed_cps, "end_to_end": e2e_cps, "gpu_util": e2e_util,
                     "feed_over_model": feed_cps / model_cps, "end_to_end_over_model": e2e_cps / model_cps})

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    h, w = stored_shape(args.size)
    print(f"# {name}; torch {torch.__version__}, {torch.get_num_threads()} threads; SO_RGB_FLOW step, I3D width "
          f"{args.width}, {CLIP_FRAMES}x{args.size}x{args.size} clips (stored {h}x{w}), batch {args.batch}, "
          f"{'bf16' if args.bf16 else 'fp32'}{', channels_last_3d' if args.channels_last else ''}; "
          f"{args.steps} timed steps after {args.warmup}; {items} stored videos ({made:.0f} s to write)")
    print(f"# model only: {model_cps:.1f} clips/s (GPU utilisation {_fmt(model_util)} %)")
    print()
    print("| workers | feed clips/s | end-to-end clips/s | model clips/s | feed / model | end-to-end / model "
          "| GPU util % (end to end) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workers']} | {r['feed']:.1f} | {r['end_to_end']:.1f} | {model_cps:.1f} | "
              f"{r['feed_over_model']:.2f} | {r['end_to_end_over_model']:.2f} | {_fmt(r['gpu_util'])} |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": name, "torch": torch.__version__, "args": vars(args), "items": items,
            "model": model_cps, "model_gpu_util": model_util, "rows": rows}, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
