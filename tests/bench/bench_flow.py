"""Benchmark of the TV-L1 flow stage (data/flow.py) on the real clips in ../shared/realdata.

    python -m tests.bench.bench_flow                      # ~3 min on 2 idle cores: throughput, per-pair cost
    python -m tests.bench.bench_flow --pairs-per-clip 8   # more pairs, steadier figures
    python -m tests.bench.bench_flow --gt                 # + EPE vs FlyingChairs ground truth, full resolution,
                                                    #   OpenCV defaults (slow: 3-20 s a pair)
    python -m tests.bench.bench_flow --gt --no-throughput # only the ground-truth table

Figures, each against a baseline measured in the same run:
1. Per-pair cost of the stage (`video_flows`: gray conversion once, one OpenCV object reused) against a
   naive loop that creates a DualTVL1 object and converts both frames for every pair. Single thread,
   clip by clip, alternating which goes first. Wall and CPU time are both shown (CPU time is steadier on
   a shared machine).
2. Pool throughput (`map_video_flows`) in pairs/s with 1 and with 2 workers and their ratio, over the same
   clips; the workers' start-up (spawn) is measured separately and shown, and the steady rate excludes it.
The machine's load average is printed: on a shared machine the scaling ratio is bounded by free cores.
"""
from __future__ import annotations

import argparse
import itertools
import os
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from data import flow as F
from data.video import iter_frames

REALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"


def _decode(path: Path, short_side: int, max_frames: int | None) -> np.ndarray:
    return np.stack(list(itertools.islice(iter_frames(path, short_side), max_frames)))


def _naive_flows(frames: np.ndarray) -> np.ndarray:
    """The baseline: a new OpenCV object and two colour conversions for every pair."""
    out = []
    for i in range(len(frames) - 1):
        tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
        g0 = cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY)
        g1 = cv2.cvtColor(frames[i + 1], cv2.COLOR_RGB2GRAY)
        out.append(np.clip(tvl1.calc(g0, g1, None), -F.FLOW_BOUND, F.FLOW_BOUND))
    return np.stack(out)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bench_stage_vs_naive(clips: dict[str, np.ndarray]) -> None:
    cv2.setNumThreads(1)
    tvl1 = F.make_tvl1()
    t = {"naive": [0.0, 0.0], "stage": [0.0, 0.0]}
    pairs = 0
    for k, (name, frames) in enumerate(clips.items()):
        order = ("naive", "stage") if k % 2 == 0 else ("stage", "naive")
        res = {}
        for which in order:
            w0, c0 = time.perf_counter(), time.process_time()
            res[which] = _naive_flows(frames) if which == "naive" else F.video_flows(frames, tvl1=tvl1)
            t[which][0] += time.perf_counter() - w0
            t[which][1] += time.process_time() - c0
        assert np.array_equal(res["naive"], res["stage"]), name  # same bytes, only the cost differs
        pairs += len(frames) - 1
    print(f"\n1. Per-pair cost, single thread, {pairs} pairs from {len(clips)} clips (identical flows)")
    print(f"   {'method':<44}{'wall ms/pair':>14}{'cpu ms/pair':>14}")
    for which, label in (("naive", "naive: new object + 2 cvtColor per pair"),
                         ("stage", "stage: video_flows, gray once, object reused")):
        print(f"   {label:<44}{1000 * t[which][0] / pairs:>14.1f}{1000 * t[which][1] / pairs:>14.1f}")
    print(f"   naive / stage cost ratio: wall {t['naive'][0] / t['stage'][0]:.3f}x, "
          f"cpu {t['naive'][1] / t['stage'][1]:.3f}x")


def bench_pool(clips: dict[str, np.ndarray], worker_counts: list[int]) -> None:
    pairs = sum(len(f) - 1 for f in clips.values())
    tiny = np.zeros((2, 8, 8, 3), np.uint8)
    rows = []
    for n in worker_counts:
        # Start-up alone: n trivial jobs (spawn, import numpy + cv2, create the object).
        w0 = time.perf_counter()
        list(F.map_video_flows([(i, tiny) for i in range(n)], workers=n))
        startup = time.perf_counter() - w0
        c0, w0 = _children_cpu(), time.perf_counter()
        results = dict(F.map_video_flows(clips.items(), workers=n))
        wall = time.perf_counter() - w0
        cpu = _children_cpu() - c0
        bad = [k for k, v in results.items() if isinstance(v, BaseException)]
        assert not bad, bad
        steady = max(wall - startup, 1e-9)
        rows.append((n, wall, startup, pairs / wall, pairs / steady, 1000 * cpu / pairs))
    print(f"\n2. Pool throughput, {pairs} pairs from {len(clips)} clips (spawned single-threaded workers)")
    print(f"   {'workers':>7}{'wall s':>9}{'start-up s':>12}{'pairs/s':>10}{'pairs/s steady':>16}"
          f"{'worker cpu ms/pair':>20}")
    for n, wall, startup, rate, steady, cpu in rows:
        print(f"   {n:>7}{wall:>9.2f}{startup:>12.2f}{rate:>10.2f}{steady:>16.2f}{cpu:>20.1f}")
    base = rows[0]
    for n, _, _, rate, steady, _ in rows[1:]:
        print(f"   scaling {n} vs {base[0]} worker(s): {rate / base[3]:.2f}x (incl. start-up), "
              f"{steady / base[4]:.2f}x (steady)")


def bench_ground_truth() -> None:
    pair_dir = REALDATA / "flow_pairs"
    ids = sorted(p.name.split("-")[0] for p in pair_dir.glob("*-gt.flo"))
    cv2.setNumThreads(1)
    print(f"\n3. FlyingChairs, full resolution (512x384), OpenCV {cv2.__version__} defaults, 1 thread")
    print(f"   {'pair':<9}{'mean |gt|':>10}{'EPE raw':>10}{'EPE clipped':>13}{'EPE stored':>12}{'cpu s':>8}")
    for pid in ids:
        rgb = [cv2.cvtColor(cv2.imread(str(pair_dir / f"{pid}-img{k}.ppm")), cv2.COLOR_BGR2RGB) for k in (0, 1)]
        gt = F.read_flo(pair_dir / f"{pid}-gt.flo")
        c0 = time.process_time()
        raw = F.make_tvl1().calc(*(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in rgb), None)
        cpu = time.process_time() - c0
        clipped = np.clip(raw, -F.FLOW_BOUND, F.FLOW_BOUND)  # what the stage keeps (= F.tvl1_flow)
        stored = F.dequantize_flow(F.quantize_flow(clipped))
        print(f"   {pid:<9}{np.linalg.norm(gt, axis=-1).mean():>10.2f}{F.endpoint_error(raw, gt):>10.3f}"
              f"{F.endpoint_error(clipped, gt):>13.3f}{F.endpoint_error(stored, gt):>12.3f}{cpu:>8.1f}", flush=True)
    print("   EPE raw: unclipped TV-L1 vs gt; clipped: +-20 as stored; stored: after uint8 quantisation.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short-side", type=int, default=256)
    ap.add_argument("--pairs-per-clip", type=int, default=2, help="first N pairs of every clip (default 2)")
    ap.add_argument("--max-clips", type=int, default=None)
    ap.add_argument("--workers", default="1,2", help="worker counts for the pool, comma-separated")
    ap.add_argument("--gt", action="store_true", help="also measure EPE vs FlyingChairs ground truth (slow)")
    ap.add_argument("--no-throughput", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    if not REALDATA.exists():
        print(f"real data missing: {REALDATA}")
        return 1
    print(f"OpenCV {cv2.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    if not args.no_throughput:
        paths = sorted(p for p in (REALDATA / "videos").iterdir() if p.suffix in (".mp4", ".avi"))
        paths = paths[: args.max_clips] if args.max_clips else paths
        clips = {p.name: _decode(p, args.short_side, args.pairs_per_clip + 1) for p in paths}
        sizes = sorted({f.shape[1:3] for f in clips.values()})
        print(f"clips: {len(clips)}, short side {args.short_side}, sizes (H, W) {sizes}, "
              f"{args.pairs_per_clip} pairs per clip")
        bench_stage_vs_naive(clips)
        bench_pool(clips, [int(x) for x in args.workers.split(",")])
    if args.gt:
        bench_ground_truth()
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
