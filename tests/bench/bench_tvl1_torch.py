"""Throughput of the batched PyTorch TV-L1 (data/tvl1_torch.py) against OpenCV's DualTVL1, one process.

    python -m tests.bench.bench_tvl1_torch                         # CPU: OpenCV 1 core and pool of 2, torch
                                                             #   batch 1 and 32 (a few minutes)
    python -m tests.bench.bench_tvl1_torch --device cuda --quick   # GPU: OpenCV 1 core baseline, CUDA check
                                                             #   against OpenCV, batch 64/128/256 (< 3 min)
    python -m tests.bench.bench_tvl1_torch --json out.json         # also write the figures as JSON

Frames: consecutive pairs from the real clips in ../shared/realdata/videos, decoded at short side 256
and centre-cropped to 224x224 (``--crop 0``: whole 256-short-side frames, grouped by size), converted
to gray with OpenCV. ``--realdata DIR`` points elsewhere (DIR or DIR/videos holding the clips); without
any clip the bench falls back to synthetic textured pairs and says so. All rates are pairs per second
with OpenCV's default parameters; every ratio is against OpenCV on one core measured in the same run.
The CUDA check runs the GPU on the pairs OpenCV was timed on and prints the mean endpoint difference
(flows clipped to +-20 px; the pipeline's agreement criterion is <= 0.3 px). Without opencv-contrib
(``cv2.optflow``), OpenCV rows are skipped, the check compares CUDA with the torch CPU path and the
ratios use the torch CPU batch-1 rate instead (labelled).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from data.tvl1_torch import tvl1_flow_pairs

REALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"
FLOW_BOUND = 20.0


# ------------------------------------------------------------------------------------------- frames
def _video_dir(realdata: Path) -> Path | None:
    for d in (realdata / "videos", realdata):
        if d.is_dir() and any(p.suffix in (".mp4", ".avi") for p in d.iterdir()):
            return d
    return None


def _clip_pairs(path: Path, n_pairs: int, short_side: int, crop: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first n_pairs consecutive gray pairs of a clip (short side resized, optional centre crop)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while len(frames) < n_pairs + 1:
            ok, bgr = cap.read()
            if not ok:
                break
            h, w = bgr.shape[:2]
            s = short_side / min(h, w)
            if s != 1:
                size = (round(w * s), round(h * s))
                bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
            gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
            if crop:
                h, w = gray.shape
                y, x = (h - crop) // 2, (w - crop) // 2
                gray = np.ascontiguousarray(gray[y : y + crop, x : x + crop])
            frames.append(gray)
    finally:
        cap.release()
    return [(frames[t], frames[t + 1]) for t in range(len(frames) - 1)]


def _synthetic_pairs(n: int, size: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = cv2.GaussianBlur((rng.random((size + 16, size + 16)) * 255).astype(np.float32), (0, 0), 2.0)
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        dx, dy = rng.uniform(-3, 3, 2)
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        nxt = cv2.warpAffine(img, m, img.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        out.append((img[8:-8, 8:-8].copy(), nxt[8:-8, 8:-8].copy()))
    return out


def load_pairs(realdata: Path, n_total: int, short_side: int, crop: int) -> tuple[list, str]:
    """About n_total pairs spread over all clips (round robin), and a description of the source."""
    vdir = _video_dir(realdata)
    if vdir is None:
        return _synthetic_pairs(n_total, crop or 224), f"SYNTHETIC textured pairs (no clips under {realdata})"
    clips = sorted(p for p in vdir.iterdir() if p.suffix in (".mp4", ".avi"))
    per_clip = -(-n_total // len(clips)) + 1
    lists = [_clip_pairs(p, per_clip, short_side, crop) for p in clips]
    pairs = []
    for k in range(per_clip):
        pairs.extend(lst[k] for lst in lists if k < len(lst))
    return pairs[:n_total], f"{len(clips)} real clips in {vdir}"


# -------------------------------------------------------------------------------------- runners
def _have_opencv_tvl1() -> bool:
    return hasattr(cv2, "optflow") and hasattr(cv2.optflow, "DualTVL1OpticalFlow_create")


def _opencv_flow(pair) -> np.ndarray:
    # a fresh object per pair: a used one keeps a lowered nscales after a small image
    flow = cv2.optflow.DualTVL1OpticalFlow_create().calc(pair[0], pair[1], None)
    return np.clip(flow, -FLOW_BOUND, FLOW_BOUND)


def _pool_init():
    cv2.setNumThreads(1)


def time_opencv(pairs) -> tuple[float, list[np.ndarray]]:
    cv2.setNumThreads(1)
    t = time.perf_counter()
    flows = [_opencv_flow(p) for p in pairs]
    return len(pairs) / (time.perf_counter() - t), flows


def time_opencv_pool(pairs, workers: int = 2) -> float:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_pool_init) as pool:
        pool.map(_opencv_flow, pairs[:workers])  # start-up excluded
        t = time.perf_counter()
        pool.map(_opencv_flow, pairs, chunksize=1)
        return len(pairs) / (time.perf_counter() - t)


def _group_by_size(pairs):
    groups: dict[tuple, list] = {}
    for p in pairs:
        groups.setdefault(p[0].shape, []).append(p)
    return list(groups.values())


def time_torch(pairs, device: str, batch: int) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    tvl1_flow_pairs(pairs, device=device, batch_size=batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(pairs) / (time.perf_counter() - t)


def mean_epe(a: list[np.ndarray], b: list[np.ndarray]) -> list[float]:
    return [float(np.linalg.norm(x - y, axis=-1).mean()) for x, y in zip(a, b)]


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or 'cpu,cuda' (default cpu)")
    ap.add_argument("--quick", action="store_true", help="fewer pairs; on cuda skips the torch CPU rows")
    ap.add_argument("--cv-pairs", type=int, default=None, help="pairs timed with OpenCV (default 24, quick 8)")
    ap.add_argument("--cpu-batch", type=int, default=32, help="torch CPU batch size besides 1 (0: skip)")
    ap.add_argument("--gpu-batches", default="64,128,256", help="CUDA batch sizes")
    ap.add_argument("--no-pool", action="store_true", help="skip the OpenCV pool of 2 processes")
    ap.add_argument("--short-side", type=int, default=256)
    ap.add_argument("--crop", type=int, default=224, help="centre crop (0: whole frames)")
    ap.add_argument("--realdata", type=Path, default=REALDATA)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)

    devices = [d.strip() for d in args.device.split(",") if d.strip()]
    use_cuda = any(d.startswith("cuda") for d in devices)
    use_cpu = "cpu" in devices
    if use_cuda and not torch.cuda.is_available():
        print("CUDA requested but not available; running the CPU part only")
        use_cuda, use_cpu = False, True
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    have_cv = _have_opencv_tvl1()
    n_cv = args.cv_pairs or (8 if args.quick else 24)
    gpu_batches = [int(b) for b in args.gpu_batches.split(",") if b.strip()] if use_cuda else []
    n_total = max([n_cv, args.cpu_batch if use_cpu else 0] + gpu_batches)

    t0 = time.perf_counter()
    pairs, source = load_pairs(args.realdata, n_total, args.short_side, args.crop)
    sizes = sorted({p[0].shape for p in pairs})
    print(f"frames: {len(pairs)} pairs from {source}; sizes (HxW) {sizes}; decoded in {time.perf_counter() - t0:.1f} s")
    print(f"torch {torch.__version__}, OpenCV {cv2.__version__} ({'contrib' if have_cv else 'NO cv2.optflow'}), "
          f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}" + (f", GPU {torch.cuda.get_device_name()}" if use_cuda else ""))
    res: dict = {"source": source, "sizes": [list(s) for s in sizes], "torch": torch.__version__,
                 "opencv": cv2.__version__, "rows": []}
    rows = res["rows"]
    cv_pairs = pairs[:n_cv]

    def add(name, rate, n, note=""):
        rows.append({"name": name, "pairs_per_s": rate, "pairs": n, "note": note})
        print(f"  {name:34s} {rate:9.2f} pairs/s  ({n} pairs) {note}", flush=True)

    base_rate, base_name, ref_flows = None, None, None
    if have_cv:
        rate, ref_flows = time_opencv(cv_pairs)
        add("opencv 1 core", rate, len(cv_pairs))
        base_rate, base_name = rate, "opencv 1 core"
        if use_cpu and not args.no_pool:
            add("opencv pool of 2 processes", time_opencv_pool(cv_pairs), len(cv_pairs))
    if use_cpu or not have_cv:
        n1 = min(len(cv_pairs), 4 if args.quick else 8)
        rate = time_torch(cv_pairs[:n1], "cpu", 1)
        add("torch cpu batch 1 (1 thread)", rate, n1)
        if base_rate is None:
            base_rate, base_name = rate, "torch cpu batch 1"
        if use_cpu and args.cpu_batch > 1:
            n32 = min(len(pairs), args.cpu_batch)
            add(f"torch cpu batch {args.cpu_batch} (1 thread)", time_torch(pairs[:n32], "cpu", args.cpu_batch), n32)
        if ref_flows is None:
            ref_flows = tvl1_flow_pairs(cv_pairs, device="cpu", batch_size=8)
            print("  (no opencv-contrib: the CUDA check compares with the torch CPU path)")

    if use_cuda:
        t = time.perf_counter()
        gpu_flows = tvl1_flow_pairs(cv_pairs, device="cuda", batch_size=len(cv_pairs))  # also compiles the kernels
        torch.cuda.synchronize()
        diffs = mean_epe(gpu_flows, ref_flows)
        ref_name = "opencv" if have_cv else "torch cpu"
        res["cuda_check"] = {"against": ref_name, "mean_epe_per_pair": diffs, "mean_epe": float(np.mean(diffs)),
                             "first_call_s": time.perf_counter() - t}
        print(f"  CUDA check vs {ref_name}: mean endpoint difference {np.mean(diffs):.4f} px "
              f"(per pair {', '.join(f'{d:.3f}' for d in diffs)}); first call {time.perf_counter() - t:.1f} s")
        for b in gpu_batches:
            chunk = [pairs[k % len(pairs)] for k in range(b)]
            if args.crop == 0:
                chunk = max(_group_by_size(pairs), key=len)[:b]  # one size: one batch
            time_torch(chunk, "cuda", b)  # warm-up: the allocator's pool for this size
            add(f"torch cuda batch {b}", time_torch(chunk, "cuda", b), len(chunk))
        res["cuda_device"] = torch.cuda.get_device_name()
        res["cuda_max_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30

    res["baseline"] = base_name
    print(f"\n{'':34s} {'pairs/s':>9s}  x {base_name}")
    for r in rows:
        r["ratio"] = r["pairs_per_s"] / base_rate if base_rate else None
        print(f"  {r['name']:34s} {r['pairs_per_s']:9.2f}  {r['ratio']:8.1f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
