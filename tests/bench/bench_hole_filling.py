"""Hole filling: quality of the default push-pull filler against OpenCV TELEA, and whole-video synthesis speed.

    python -m tests.bench.bench_hole_filling [--quick] [--device cpu|cuda] [--repeats 5]

Quality (a test that cannot flatter us): the first frame of every real clip in ../shared/realdata/videos
(decoded with data.video at its own size) is synthesised into a 16-frame video; the hole masks of frames
0, 3, ..., 15 (exactly what our warps leave, `SynthesisResult.holes`; they do not depend on the filler,
since the depth travels through its own fill) are cut out of that real frame, filled, and compared with
its true pixels on hole pixels only: PSNR over all hole pixels pooled, and mean absolute error (0..255).
Two depths: "gradient", a vertical-gradient inverse depth (ground plane: cracks and border strips), and
"layers", the same gradient made piecewise constant on SLIC superpixels (region size 24) with a seeded
jitter of +-0.15 per superpixel, so that depth edges sit on image edges and the warps open disocclusions
there, as a real depth map does; that is where any filler does worst. Pixels are also split into cracks
(>= 2 known 8-neighbours) and wide holes.

Speed: frames/s of whole-video synthesis (`synthesize_video`, 16 frames, the first frame of ride_horse.mp4
resized) with hole_filler=pushpull against hole_filler=telea in the same process, one CPU thread, at
640x480 and 256x340. With --device cuda: the same whole videos on the GPU at 256x340, and the batched
filler alone on 256 frames of 256x340 at once (frames/s).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from data.hole_filling import CRACK_NEIGHBOURS, fill_holes_batch
from data.synthesis import fill_holes, inpaint_holes, synthesize_video
from data.video import decode_video

REALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"
MASK_FRAMES = (0, 3, 6, 9, 12, 15)


def gradient_depth(height: int, width: int) -> np.ndarray:
    return np.repeat(np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None], width, axis=1)


def layered_depth(image: np.ndarray, seed: int) -> np.ndarray:
    """The vertical gradient, constant on each SLIC superpixel (its centroid's value) plus a seeded jitter."""
    slic = cv2.ximgproc.createSuperpixelSLIC(cv2.cvtColor(image, cv2.COLOR_RGB2LAB), cv2.ximgproc.SLICO, 24)
    slic.iterate(10)
    labels = slic.getLabels().ravel()
    count = labels.max() + 1
    gradient = gradient_depth(*image.shape[:2]).ravel()
    centre = np.bincount(labels, gradient, count) / np.maximum(np.bincount(labels, None, count), 1)
    jitter = np.random.default_rng(seed).uniform(-0.15, 0.15, count)
    return (centre + jitter)[labels].reshape(image.shape[:2]).astype(np.float32)


def telea(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    return inpaint_holes(np.where(hole[..., None], 0, image).astype(np.uint8), hole)


def quality(videos: list[Path]) -> list[tuple]:
    """Rows (depth, filler, pixel class, hole fraction, PSNR, MAE, hole pixels)."""
    fillers = {"pushpull": fill_holes, "telea": telea}
    totals = {}  # (depth, filler, class) -> [squared error, absolute error, values]
    fraction = {}
    for index, path in enumerate(videos):
        still = decode_video(path)[0]
        height, width = still.shape[:2]
        for depth_name, inverse in (("gradient", gradient_depth(height, width)),
                                    ("layers", layered_depth(still, index))):
            holes = synthesize_video(still, inverse, num_frames=16, seed=index).holes
            for k in MASK_FRAMES:
                hole = holes[k]
                fraction.setdefault(depth_name, []).append(hole.mean())
                known = cv2.boxFilter((~hole).astype(np.float32), -1, (3, 3), normalize=False,
                                      borderType=cv2.BORDER_CONSTANT)
                crack = hole & (known >= CRACK_NEIGHBOURS)
                truth = still.astype(np.float64)
                for filler_name, fill in fillers.items():
                    filled = fill(still, hole).astype(np.float64)
                    for cls, mask in (("all", hole), ("crack", crack), ("wide", hole & ~crack)):
                        diff = filled[mask] - truth[mask]
                        t = totals.setdefault((depth_name, filler_name, cls), [0.0, 0.0, 0])
                        t[0] += float((diff ** 2).sum())
                        t[1] += float(np.abs(diff).sum())
                        t[2] += diff.size
    rows = []
    for (depth_name, filler_name, cls), (se, ae, n) in totals.items():
        psnr = 10 * np.log10(255.0 ** 2 / (se / n)) if se > 0 else float("inf")
        rows.append((depth_name, filler_name, cls, float(np.mean(fraction[depth_name])), psnr, ae / n, n // 3))
    return rows


def best_time(fn, repeats: int, sync=lambda: None) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def speed_cpu(still: np.ndarray, sizes, repeats: int, frames: int) -> list[tuple]:
    rows = []
    for height, width in sizes:
        image = cv2.resize(still, (width, height), interpolation=cv2.INTER_LINEAR)
        for depth_name, inverse in (("gradient", gradient_depth(height, width)),
                                    ("layers", layered_depth(image, 0))):
            for filler in ("telea", "pushpull"):  # warm-up
                synthesize_video(image, inverse, 2, seed=0, hole_filler=filler)
            # Interleaved, best of `repeats` each: load from other processes hits both paths alike.
            seconds = {"telea": float("inf"), "pushpull": float("inf")}
            for _ in range(repeats):
                for filler in seconds:
                    seconds[filler] = min(seconds[filler], best_time(
                        lambda: synthesize_video(image, inverse, frames, seed=0, hole_filler=filler), 1))
            fps = {filler: frames / t for filler, t in seconds.items()}
            # The fillers alone, on the same video's hole masks (ms per frame).
            holes = synthesize_video(image, inverse, frames, seed=0).holes
            fill_ms = {name: 1000 * best_time(lambda: [fill(image, hole) for hole in holes], repeats) / frames
                       for name, fill in (("telea", telea), ("pushpull", fill_holes))}
            rows.append((f"{height}x{width}", depth_name, fps["telea"], fps["pushpull"],
                         fps["pushpull"] / fps["telea"], fill_ms["telea"], fill_ms["pushpull"]))
    return rows


def speed_gpu(still: np.ndarray, repeats: int, frames: int, batch: int) -> list[tuple]:
    height, width = 256, 340
    image = cv2.resize(still, (width, height), interpolation=cv2.INTER_AREA)
    inverse = gradient_depth(height, width)  # SLIC needs opencv-contrib, not always on GPU machines
    sync = torch.cuda.synchronize
    rows = []
    for filler in ("telea", "pushpull"):
        synthesize_video(image, inverse, 2, seed=0, device="cuda", hole_filler=filler)
        seconds = best_time(lambda: synthesize_video(image, inverse, frames, seed=0, device="cuda",
                                                     hole_filler=filler), repeats, sync)
        rows.append((f"whole video, hole_filler={filler}", frames, frames / seconds))
    holes = synthesize_video(image, inverse, 16, seed=0).holes
    images = torch.from_numpy(image).cuda()[None].repeat(batch, 1, 1, 1)
    masks = torch.from_numpy(holes).cuda().repeat(-(-batch // 16), 1, 1)[:batch]
    fill_holes_batch(images, masks)
    seconds = best_time(lambda: fill_holes_batch(images, masks), repeats, sync)
    rows.append((f"fill_holes_batch alone, {batch} frames per call", batch, batch / seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="every third clip, 8-frame videos, 2 repeats (under a minute on a GPU)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()

    videos = sorted((REALDATA / "videos").glob("*.[am][vp][i4]"))
    if not videos and not args.skip_quality:
        raise SystemExit(f"no real videos found under {REALDATA / 'videos'} (the quality test needs them; "
                         f"--skip-quality measures speed only)")
    repeats, frames = (2, 8) if args.quick else (args.repeats, 16)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(f"torch {torch.__version__}, OpenCV {cv2.__version__}, 1 CPU thread"
          + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""))

    if not args.skip_quality:
        chosen = videos[::3] if args.quick else videos
        print(f"\nquality on hole pixels, {len(chosen)} real clips x {len(MASK_FRAMES)} masks x 2 depths "
              f"(PSNR dB, MAE of 0..255; higher PSNR, lower MAE is better)")
        rows = quality(chosen)
        print(f"{'depth':<9} {'pixels':<6} {'holes %':>7} {'n':>9}  {'pushpull PSNR':>13} {'MAE':>6}  "
              f"{'telea PSNR':>10} {'MAE':>6}  {'dPSNR':>6}")
        table = {(d, f, c): (fr, p, m, n) for d, f, c, fr, p, m, n in rows}
        for depth_name in ("gradient", "layers"):
            for cls in ("all", "crack", "wide"):
                fr, p_pp, m_pp, n = table[(depth_name, "pushpull", cls)]
                _, p_te, m_te, _ = table[(depth_name, "telea", cls)]
                print(f"{depth_name:<9} {cls:<6} {100 * fr:>7.2f} {n:>9}  {p_pp:>13.2f} {m_pp:>6.2f}  "
                      f"{p_te:>10.2f} {m_te:>6.2f}  {p_pp - p_te:>+6.2f}")

    if videos:
        still = decode_video(REALDATA / "videos" / "ride_horse.mp4")[0]
    else:  # speed only: the holes follow the depth, not the content; a smooth texture stands in
        noise = np.random.default_rng(0).random((256, 340, 3)).astype(np.float32)
        still = (cv2.GaussianBlur(noise, (0, 0), 2.0) * 255).astype(np.uint8)
        print("no real videos: speed measured on a smooth random texture")
    if args.device == "cpu":
        sizes = [(256, 340)] if args.quick else [(480, 640), (256, 340)]
        print(f"\nwhole-video synthesis, {frames} frames, frames/s on one CPU thread (best of {repeats})")
        print(f"{'size':<8} {'depth':<9} {'telea':>8} {'pushpull':>9} {'speed-up':>9}   "
              f"{'fill alone, ms/frame: telea':>27} {'pushpull':>9}")
        for size, depth_name, f_te, f_pp, ratio, ms_te, ms_pp in speed_cpu(still, sizes, repeats, frames):
            print(f"{size:<8} {depth_name:<9} {f_te:>8.1f} {f_pp:>9.1f} {ratio:>8.2f}x   "
                  f"{ms_te:>27.1f} {ms_pp:>9.1f}")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available here")
        print(f"\nGPU, 256x340, gradient depth, frames/s (best of {repeats})")
        print(f"{'path':<52} {'frames':>6} {'frames/s':>9}")
        for label, n, fps in speed_gpu(still, repeats, frames, 256):
            print(f"{label:<52} {n:>6} {fps:>9.1f}")


if __name__ == "__main__":
    main()
