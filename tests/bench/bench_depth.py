"""MiDaS depth throughput: images per second through ``predict_inverse_depth_batch`` (transform, network, resize back).

Random weights (the speed does not depend on them), one representative 256x340 RGB image per model.
CPU: 1 and 2 torch threads, the baseline is 1 thread of the same model. CUDA (when available): batches of 8,
ratio against the same model's 1-thread CPU figure, and the largest CPU/CUDA difference of the depth map.

    python -m tests.bench.bench_depth                  # beit_base and swin2_tiny on the CPU, every model on CUDA
    python -m tests.bench.bench_depth --all            # also dpt_beit_large_512 on the CPU (slow: ~1 min per thread count)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from model.depth import MIDAS_VARIANTS, build_midas, network_input_size, predict_inverse_depth_batch  # noqa: E402

IMAGE_HW = (256, 340)
CPU_SKIP_UNLESS_ALL = {"dpt_beit_large_512", "dpt_beit_large_384"}


def _image() -> np.ndarray:
    """A smooth gradient with noise: content does not change the cost, but keeps the output non-trivial."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:IMAGE_HW[0], 0:IMAGE_HW[1]]
    base = np.stack([x * 255 / IMAGE_HW[1], y * 255 / IMAGE_HW[0], np.full_like(x, 128)], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def _images_per_second(model, images, reps: int, device) -> tuple[float, np.ndarray]:
    out = predict_inverse_depth_batch(model, images, device=device, batch_size=len(images))  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        predict_inverse_depth_batch(model, images, device=device, batch_size=len(images))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return reps * len(images) / (time.perf_counter() - start), out[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="include the BEiT-L models on the CPU")
    parser.add_argument("--models", default="dpt_beit_base_384,dpt_swin2_tiny_256,dpt_beit_large_512")
    parser.add_argument("--cpu-reps", type=int, default=1)
    parser.add_argument("--cuda-reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--no-cpu", action="store_true")
    args = parser.parse_args()

    image = _image()
    rows = []
    print(f"torch {torch.__version__}, image {IMAGE_HW[0]}x{IMAGE_HW[1]}")
    for name in args.models.split(","):
        variant = MIDAS_VARIANTS[name]
        net = "x".join(map(str, network_input_size(variant, *IMAGE_HW)))
        model = build_midas(name)
        cpu_base, cpu_depth = None, None
        if not args.no_cpu and (args.all or name not in CPU_SKIP_UNLESS_ALL):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                ips, depth = _images_per_second(model, [image], args.cpu_reps, torch.device("cpu"))
                cpu_base = cpu_base or ips
                cpu_depth = depth
                rows.append((name, net, f"cpu {threads} thread{'s' * (threads > 1)}", ips, ips / cpu_base, ""))
        if torch.cuda.is_available():
            dev = torch.device("cuda")
            ips, depth = _images_per_second(model, [image] * args.batch, args.cuda_reps, dev)
            diff = ""
            if cpu_depth is not None:
                diff = f"{np.abs(depth - cpu_depth).max() / np.abs(cpu_depth).max():.1e}"
            rows.append((name, net, f"cuda batch {args.batch}", ips, ips / cpu_base if cpu_base else float("nan"),
                         diff))
            model.cpu()
            torch.cuda.empty_cache()
        del model

    print(f"{'model':<20} {'net input':<10} {'device':<16} {'img/s':>8} {'x 1-thread':>10} {'max|cuda-cpu|/max':>18}")
    for name, net, device, ips, ratio, diff in rows:
        print(f"{name:<20} {net:<10} {device:<16} {ips:>8.2f} {ratio:>10.2f} {diff:>18}")
    if torch.cuda.is_available():
        print(f"cuda device: {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
