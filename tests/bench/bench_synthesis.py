"""Source-video synthesis throughput: the vectorised warp against a per-pixel Python loop of the same warp.

    python -m tests.bench.bench_synthesis [--frames 16] [--loop-frames 2] [--repeats 3]

Both paths make the same chained video of a 256x340 frame (the first frame of a real HMDB51 clip when
../shared/realdata is there, else a synthetic texture): warp, hole filling with the default filler
(push-pull; tests/bench/bench_hole_filling.py compares it with TELEA), depth hole filling. The loop path
swaps `warp_forward` for `warp_forward_loop` and is timed on fewer frames in the same process. CPU runs
use one torch/OpenCV thread. On CUDA (when available) the warp and the hole filling run on the GPU and the
depth fill on the CPU, so GPU figures are given for the whole video and the warp alone.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from data.synthesis import (
    camera_intrinsics,
    depth_from_inverse_depth,
    fill_depth_holes,
    fill_holes,
    pixel_grid,
    sample_camera_motion,
    synthesize_video,
    warp_forward,
    warp_forward_loop,
)

HEIGHT, WIDTH = 256, 340
REALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"


def _test_image() -> tuple[np.ndarray, str]:
    path = REALDATA / "videos" / "ride_horse.mp4"
    capture = cv2.VideoCapture(str(path))
    ok, bgr = capture.read()
    capture.release()
    if ok:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return cv2.resize(rgb, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA), path.name
    noise = np.random.default_rng(0).random((HEIGHT, WIDTH, 3)).astype(np.float32)
    return (cv2.GaussianBlur(noise, (0, 0), 2.0) * 255).astype(np.uint8), "synthetic texture"


def _loop_video(image: np.ndarray, inverse_depth: np.ndarray, num_frames: int, seed: int) -> np.ndarray:
    """`synthesize_video` with the per-pixel loop as the warp (same motions, hole filling and depth fill)."""
    K = camera_intrinsics(*inverse_depth.shape)
    rng = np.random.default_rng(seed)
    frame, depth, frames = image, depth_from_inverse_depth(inverse_depth), []
    for _ in range(num_frames):
        warped = warp_forward_loop(frame, depth, K, sample_camera_motion(rng))
        frame = fill_holes(warped.image, warped.hole)
        depth = fill_depth_holes(warped.depth, warped.hole)
        frames.append(frame)
    return np.stack(frames)


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--loop-frames", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    image, source = _test_image()
    inverse_depth = np.repeat(np.linspace(0.0, 1.0, HEIGHT, dtype=np.float32)[:, None], WIDTH, axis=1)
    print(f"synthesis of a {HEIGHT}x{WIDTH} frame ({source}), vertical-gradient inverse depth, "
          f"torch {torch.__version__}, OpenCV {cv2.__version__}, 1 CPU thread")

    # The two paths must make the same video before their speed is worth comparing.
    fast = synthesize_video(image, inverse_depth, num_frames=args.loop_frames, seed=0).frames
    slow = _loop_video(image, inverse_depth, args.loop_frames, seed=0)
    # float32 (torch) vs float64 (Python) arithmetic may round a point sitting on a half-pixel boundary
    # differently, so a handful of pixels per frame can differ; everything else is identical.
    differing = (fast != slow).any(axis=-1).sum(axis=(1, 2))
    print(f"loop vs vectorised video: pixels differing per frame {differing.tolist()} of {HEIGHT * WIDTH}")

    rows = []
    t_loop = _best_time(lambda: _loop_video(image, inverse_depth, args.loop_frames, 0), 1)
    rows.append(("per-pixel Python loop, CPU", args.loop_frames, t_loop))
    t_vec = _best_time(lambda: synthesize_video(image, inverse_depth, args.frames, seed=0, return_flow=True),
                       args.repeats)
    rows.append(("vectorised torch, CPU", args.frames, t_vec))

    # Where the vectorised CPU time goes: the warp itself vs the hole filling.
    K = camera_intrinsics(HEIGHT, WIDTH)
    motion = sample_camera_motion(np.random.default_rng(0))
    depth = torch.from_numpy(depth_from_inverse_depth(inverse_depth))
    tensor, grid = torch.from_numpy(image), pixel_grid(HEIGHT, WIDTH)
    t_warp = _best_time(lambda: [warp_forward(tensor, depth, K, motion, grid) for _ in range(args.frames)],
                        args.repeats)
    rows.append(("  of which warp_forward alone, CPU", args.frames, t_warp))
    t_loop_warp = _best_time(lambda: warp_forward_loop(image, depth.numpy(), K, motion), 1)
    rows.append(("  warp_forward_loop alone, CPU", 1, t_loop_warp))

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        synthesize_video(image, inverse_depth, 2, seed=0, device="cuda")  # warm-up (CUDA context, kernels)
        t_gpu = _best_time(lambda: synthesize_video(image, inverse_depth, args.frames, seed=0, device="cuda",
                                                    return_flow=True), args.repeats)
        rows.append((f"vectorised torch, {name}", args.frames, t_gpu))
        d_gpu, i_gpu, g_gpu = depth.cuda(), tensor.cuda(), pixel_grid(HEIGHT, WIDTH, "cuda")

        def gpu_warps():
            for _ in range(args.frames):
                warp_forward(i_gpu, d_gpu, K, motion, g_gpu)
            torch.cuda.synchronize()

        gpu_warps()
        rows.append((f"  of which warp_forward alone, {name}", args.frames, _best_time(gpu_warps, args.repeats)))

    loop_fps = args.loop_frames / t_loop
    print(f"\n{'path':<48} {'frames':>6} {'seconds':>9} {'frames/s':>10} {'vs loop':>9}")
    for label, frames, seconds in rows:
        fps = frames / seconds
        ratio = f"{fps / loop_fps:8.0f}x" if not label.startswith("  ") else ""
        print(f"{label:<48} {frames:>6} {seconds:>9.3f} {fps:>10.1f} {ratio:>9}")
    print(f"\nwarp alone: vectorised {t_loop_warp / (t_warp / args.frames):.0f}x faster than the loop (CPU)")


if __name__ == "__main__":
    main()
