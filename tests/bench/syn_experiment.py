"""SYN end to end without Luigi: generate SYN, make source videos and flows, write stores, train variants.

    python -m tests.bench.syn_experiment WORKDIR [--variants SO_RGB FULL ...] [--seeds 0 1 2] [--set key=value ...]

Data stages (cached in WORKDIR/data, rebuilt only when missing): ``data.syn.generate_syn`` -> per still
``data.synthesis.synthesize_video`` (16 frames, ground-truth inverse depth of SYN) -> ``data.flow.video_flows``
(TV-L1 with luigi.cfg's SYN settings) -> ``source.h5``; target videos decoded (``data.video.decode_video``) -> TV-L1 -> ``target.h5``.
Then ``model.trainer.train`` with ``SYN_PRESET`` (+ ``--set`` overrides) for every variant and seed, and a
table of last-epoch target accuracies (mean +- std over seeds) with the time each run took.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _limit_threads():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _source_item(args):
    still_path, depth_path, item_id, num_frames, tvl1 = args
    _limit_threads()
    import cv2

    from data.flow import video_flows
    from data.images import load_rgb
    from data.synthesis import item_seed, synthesize_video

    image = load_rgb(still_path)
    inverse_depth = cv2.imread(str(depth_path), cv2.IMREAD_UNCHANGED).astype(np.float32) / 65535.0
    frames = synthesize_video(image, inverse_depth, num_frames=num_frames, seed=item_seed(item_id)).frames
    return item_id, frames, video_flows(frames, params=tvl1)


def _target_item(args):
    path, item_id, tvl1 = args
    _limit_threads()
    from data.flow import video_flows
    from data.video import decode_video

    frames = decode_video(path)
    return item_id, frames, video_flows(frames, params=tvl1)


def prepare_syn(workdir, seed: int = 0, workers: int = 2, num_frames: int = 16, log=print) -> tuple[str, str]:
    """SYN stores ``source.h5`` (16-frame synthesised videos + TV-L1 flows) and ``target.h5`` (decoded
    target videos + TV-L1 flows) under ``workdir/data``; returns their paths."""
    from data.store import ShardWriter, is_complete
    from data.syn import SYN_CLASSES, SynConfig, generate_syn
    from pipeline.flow import tvl1_params_from_config

    data_dir = Path(workdir) / "data"
    source_path, target_path = data_dir / "source.h5", data_dir / "target.h5"
    if is_complete(source_path) and is_complete(target_path):
        return str(source_path), str(target_path)
    t0 = time.time()
    root = data_dir / "syn"
    summary = generate_syn(root, SynConfig(seed=seed))
    log(f"SYN generated in {summary['seconds']:.1f}s: {summary['counts']}")
    tvl1 = tvl1_params_from_config("SYN")  # as the pipeline's ExtractFlow on SYN
    jobs_s, jobs_t, labels = [], [], {}
    for label, cls in enumerate(SYN_CLASSES):
        for p in sorted((root / "source" / cls).glob("*.png")):
            item_id = f"source/{cls}/{p.name}"
            labels[item_id] = label
            jobs_s.append((str(p), str(root / "source_depth" / cls / p.name), item_id, num_frames, tvl1))
        for p in sorted((root / "target" / cls).glob("*.avi")):
            item_id = f"target/{cls}/{p.name}"
            labels[item_id] = label
            jobs_t.append((str(p), item_id, tvl1))
    params = {"syn": summary["key"], "num_frames": num_frames}
    with ProcessPoolExecutor(workers) as pool:
        for path, fn, jobs, stage in ((source_path, _source_item, jobs_s, "syn_source"),
                                      (target_path, _target_item, jobs_t, "syn_target")):
            t1 = time.time()
            with ShardWriter(path, stage=stage, benchmark="SYN", params=params) as w:
                for item_id, frames, flows in pool.map(fn, jobs, chunksize=4):
                    w.add(item_id, label=labels[item_id], frames=frames, flow=flows)
            log(f"{stage}: {len(jobs)} videos in {time.time() - t1:.1f}s")
    log(f"SYN stores ready in {time.time() - t0:.1f}s")
    return str(source_path), str(target_path)


def _run(args):
    out_dir, source, target, variant, seed, overrides = args
    _limit_threads()
    from model.trainer import train

    t0 = time.time()
    r = train(out_dir, source, target, benchmark="SYN", variant=variant, seed=seed, log=None, **overrides)
    return variant, seed, r["accuracy"], time.time() - t0, out_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workdir")
    p.add_argument("--variants", nargs="+", default=["SO_RGB", "SO_RGB_FLOW", "SO_RGB_FLOW_CFB", "FULL"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="parallel training runs / data processes")
    p.add_argument("--tag", default="default", help="runs go to WORKDIR/runs/TAG/VARIANT_seedS")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="SYN_PRESET overrides (JSON values)")
    args = p.parse_args(argv)
    from model.trainer import parse_overrides

    overrides = parse_overrides(args.set)

    t0 = time.time()
    source, target = prepare_syn(args.workdir, args.data_seed, args.workers)
    runs = [(str(Path(args.workdir) / "runs" / args.tag / f"{v}_seed{s}"), source, target, v, s, overrides)
            for s in args.seeds for v in args.variants]
    results = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for variant, seed, acc, seconds, out_dir in pool.map(_run, runs):
            results.setdefault(variant, []).append(acc)
            print(f"{variant:16s} seed {seed}: target accuracy {100 * acc:5.1f}  ({seconds:.0f}s)  {out_dir}",
                  flush=True)
    print(f"\npreset: SYN_PRESET + {overrides}")
    print(f"{'variant':16s} {'mean':>6s} {'std':>5s}  per seed")
    for v in args.variants:
        a = 100 * np.array(results[v])
        print(f"{v:16s} {a.mean():6.1f} {a.std():5.1f}  {' '.join(f'{x:.1f}' for x in a)}")
    print(f"total {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    raise SystemExit(main())
