"""Training and evaluation throughput of the two-stream I3D step, on synthetic clips (no data needed).

    python -m tests.bench.bench_train                      # CPU: widths x crops of the SYN preset search
    python -m tests.bench.bench_train --device cuda --quick  # GPU: 16 x 224 x 224, batch 16, fp32 vs bf16 (< 2 min)

One training step is what the trainer does for the FULL variant: RGB stream on the source clips and on the
target pace clips (+ pace head), flow stream on the (bank) flow clips, losses of Eq. 6, backward, SGD.
``SO_RGB_FLOW`` drops the target clips. Evaluation: both streams on 32-frame clips, no gradients.
Figures are clips per second (source clips for training); the ratio column is against the first row,
measured in the same process. CPU runs use one thread; on a shared machine wall-clock rates drop with the
load, so the last column divides by the process's CPU time instead (what an idle core would give).
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from model.heads import VideoPaceHead  # noqa: E402
from model.i3d import InceptionI3d  # noqa: E402
from model.losses import classification_loss, local_loss, pace_loss, total_loss  # noqa: E402
from model.trainer import RGBBranch  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(device, width, crop, batch, frames=16, eval_frames=32, steps=3, warmup=1, amp=False, full=True,
            num_classes=12, channels_last=False) -> dict:
    torch.manual_seed(0)
    rgb = InceptionI3d(num_classes, 3, "st_i2v", width).freeze_stem()
    flow = InceptionI3d(num_classes, 2, "st_i2v", width).freeze_stem().to(device)
    branch = RGBBranch(rgb, VideoPaceHead(rgb.feature_dim, 5) if full else None).to(device)
    if channels_last:
        branch, flow = branch.to(memory_format=torch.channels_last_3d), flow.to(memory_format=torch.channels_last_3d)
    params = [p for m in (branch, flow) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    x_rgb = torch.rand(batch, 3, frames, crop, crop, device=device).mul(2).sub(1).contiguous(memory_format=fmt)
    x_flow = torch.rand(batch, 2, frames, crop, crop, device=device).mul(2).sub(1).contiguous(memory_format=fmt)
    x_tgt = torch.rand_like(x_rgb) if full else None
    labels = torch.randint(0, num_classes, (batch,), device=device)
    paces = torch.randint(0, 5, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")

    def step():
        with autocast:
            logits, feats, _, pace_logits = branch(x_rgb, x_tgt)
            flow_logits = flow(x_flow)
        loss = total_loss(classification_loss(logits, flow_logits, labels), local_loss(logits, labels, frames),
                          pace_loss(pace_logits, paces) if full else 0.0, 1.0, 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    _sync(device)
    train_cps = batch * steps / (time.perf_counter() - t)
    train_cpu = batch * steps / (time.process_time() - c)

    x_eval = torch.rand(batch, 3, eval_frames, crop, crop, device=device).contiguous(memory_format=fmt)
    f_eval = torch.rand(batch, 2, eval_frames, crop, crop, device=device).contiguous(memory_format=fmt)
    branch.eval()
    flow.eval()
    with torch.no_grad(), autocast:
        for _ in range(warmup):
            branch.rgb(x_eval), flow(f_eval)
        _sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            branch.rgb(x_eval), flow(f_eval)
        _sync(device)
    eval_cps = batch * steps / (time.perf_counter() - t)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return {"train": train_cps, "eval": eval_cps, "mem": mem, "train_cpu": train_cpu}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--widths", nargs="+", type=float)
    p.add_argument("--crops", nargs="+", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    rows = []
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"# {torch.cuda.get_device_name(device)}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
        steps, warmup = (5, 3) if args.quick else (20, 5)
        batch = args.batch or 16
        configs = [dict(width=1.0, crop=224, batch=batch, amp=False, full=False, label="SO_RGB_FLOW fp32"),
                   dict(width=1.0, crop=224, batch=batch, amp=True, full=False, label="SO_RGB_FLOW bf16"),
                   dict(width=1.0, crop=224, batch=batch, amp=False, full=True, label="FULL fp32"),
                   dict(width=1.0, crop=224, batch=batch, amp=True, full=True, label="FULL bf16"),
                   dict(width=1.0, crop=224, batch=batch, amp=True, full=True, channels_last=True,
                        label="FULL bf16 channels_last_3d")]
        if not args.quick:
            configs.append(dict(width=0.125, crop=48, batch=8, amp=False, full=True, label="SYN preset (FULL)"))
    else:
        steps, warmup = (2, 1) if args.quick else (4, 1)
        batch = args.batch or 8
        widths = args.widths or ([0.125] if args.quick else [0.125, 0.25])
        crops = args.crops or ([32, 48] if args.quick else [32, 48, 56, 64])
        configs = [dict(width=w, crop=c, batch=batch, amp=False, full=True, label=f"FULL w{w} {c}px")
                   for w in widths for c in crops]
    print(f"{'config':30s} {'batch':>5s} {'train clips/s':>14s} {'ratio':>6s} {'eval clips/s':>13s} {'ratio':>6s}"
          f" {'peak GiB':>8s} {'train clips/CPU-s':>17s}")
    for cfg in configs:
        label = cfg.pop("label")
        try:
            r = measure(device, steps=steps, warmup=warmup, **cfg)
        except RuntimeError as e:  # out of memory, unsupported kernel: report and go on
            print(f"{label:30s} failed: {str(e).splitlines()[0][:80]}", flush=True)
            continue
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(r)
        base = rows[0]
        print(f"{label:30s} {cfg['batch']:5d} {r['train']:14.1f} {r['train'] / base['train']:6.2f} "
              f"{r['eval']:13.1f} {r['eval'] / base['eval']:6.2f} {r['mem']:8.1f} {r['train_cpu']:17.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
