"""Why the mechanism does not show on SYN: can a classifier trained from scratch on SYN's source stills
recognise the actions in its target videos at all?

    python -m tests.bench.syn_transfer [--seeds 0 1 2] [--epochs 40]

A plain 2D CNN (four conv blocks, BatchNorm, Adam) on whole 64-px frames, no I3D and no video, isolates the
question from the method. Three settings, each over the seeds:

* ``stills -> held-out stills``: 5-fold cross-validation on the 120 source stills (is the source cue learnable?);
* ``stills -> target``: trained on all stills, tested on the 72 target videos (softmax summed over 8 uniform
  frames), the source-only pseudo-labels CFB would start from;
* ``stills + augmentation -> target``: the same with colour jitter, grayscale, zoom-out and noise, the usual
  substitutes for pretrained features.

Also printed: the share of target videos given the single most frequent class (1.0 = every video gets the
same class). Runs on the CPU in a few minutes; the SYN data comes from ``data.syn.generate_syn``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def load_syn(root: Path, frames_per_video: int = 8, seed: int = 0):
    """(stills N x 3 x 64 x 64, labels), (target frames V x F x 3 x 64 x 64, labels), in [-1, 1], of the SYN
    with data seed `seed` (generated under `root` unless it is there)."""
    from data.images import load_rgb
    from data.samplers import uniform_indices
    from data.syn import SYN_CLASSES, SynConfig, generate_syn
    from data.video import decode_video

    generate_syn(root, SynConfig(seed=seed))
    stills, s_labels, videos, t_labels = [], [], [], []
    for label, cls in enumerate(SYN_CLASSES):
        for p in sorted((root / "source" / cls).glob("*.png")):
            stills.append(load_rgb(p))
            s_labels.append(label)
        for p in sorted((root / "target" / cls).glob("*.avi")):
            frames = decode_video(p)
            videos.append(frames[uniform_indices(len(frames), frames_per_video)])
            t_labels.append(label)

    def tensor(a):
        return torch.from_numpy(np.stack(a)).movedim(-1, -3).float() / 127.5 - 1

    return (tensor(stills), torch.tensor(s_labels)), (tensor(videos), torch.tensor(t_labels))


def small_cnn(num_classes: int) -> nn.Module:
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    return nn.Sequential(block(3, 16), block(16, 16), nn.MaxPool2d(2), block(16, 32), block(32, 32), nn.MaxPool2d(2),
                         block(32, 64), nn.MaxPool2d(2), block(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, num_classes))


def augment_batch(x: torch.Tensor, g: torch.Generator, strong: bool) -> torch.Tensor:
    """Shift by up to 4 px and flip; ``strong`` adds colour jitter, grayscale, zoom-out 0.6-1 and noise."""
    n, _, h, w = x.shape
    dy, dx = torch.randint(0, 9, (2,), generator=g).tolist()
    x = F.pad(x, (4, 4, 4, 4), mode="replicate")[:, :, dy:dy + h, dx:dx + w]
    if torch.rand(1, generator=g) < 0.5:
        x = x.flip(-1)
    if strong:
        side = int(h * float(torch.empty(1).uniform_(0.6, 1.0, generator=g)))
        small = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        oy, ox = torch.randint(0, h - side + 1, (2,), generator=g).tolist()
        x = F.pad(small, (ox, w - side - ox, oy, h - side - oy), mode="replicate")
        x = x * (1 + 0.4 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)) + 0.3 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)
        gray = (torch.rand(n, 1, 1, 1, generator=g) < 0.5).float()
        x = gray * x.mean(1, keepdim=True).expand_as(x) + (1 - gray) * x
        x = x + 0.05 * torch.randn(x.shape, generator=g)
    return x


def fit(x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int, strong: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = small_cnn(6)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(order) - 15, 16):
            b = order[i:i + 16]
            loss = F.cross_entropy(net(augment_batch(x[b], g, strong)), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def predict_videos(net: nn.Module, videos: torch.Tensor) -> torch.Tensor:
    """Per-video class: softmax summed over its frames (as the trainer's pseudo-labelling)."""
    v, f = videos.shape[:2]
    probs = net(videos.flatten(0, 1)).softmax(1).view(v, f, -1).sum(1)
    return probs.argmax(1)


def folds(k: int, labels: torch.Tensor, seed: int):
    """Stratified k folds of the indices of `labels` (every class in every fold)."""
    rng = np.random.default_rng(seed)
    assignment = np.zeros(len(labels), np.int64)
    for c in labels.unique().tolist():
        idx = np.flatnonzero(labels.numpy() == c)
        assignment[rng.permutation(idx)] = np.arange(len(idx)) % k
    return [(np.flatnonzero(assignment != i), np.flatnonzero(assignment == i)) for i in range(k)]


def run(seed: int, stills, target, epochs: int) -> dict:
    (xs, ys), (xt, yt) = stills, target
    out = {}
    correct = 0
    for train_idx, test_idx in folds(5, ys, seed):
        net = fit(xs[train_idx], ys[train_idx], seed, epochs)
        with torch.no_grad():
            correct += int((net(xs[test_idx]).argmax(1) == ys[test_idx]).sum())
    out["stills -> held-out stills"] = (correct / len(xs), None)
    for name, strong in (("stills -> target", False), ("stills + augmentation -> target", True)):
        pred = predict_videos(fit(xs, ys, seed, epochs, strong), xt)
        out[name] = (float((pred == yt).float().mean()), float(np.bincount(pred.numpy()).max() / len(pred)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=40)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        stills, target = load_syn(Path(tmp) / "syn")
    results = [run(seed, stills, target, args.epochs) for seed in args.seeds]
    print(f"SYN (seed 0), 2D CNN from scratch, {args.epochs} epochs, seeds {args.seeds}; chance 16.7%")
    print(f"| {'setting':34s} | accuracy % (mean +- std) | videos given the most frequent class |")
    print(f"|{'-' * 36}|{'-' * 26}|{'-' * 38}|")
    for name in results[0]:
        acc = 100 * np.array([r[name][0] for r in results])
        shares = [r[name][1] for r in results if r[name][1] is not None]
        share = f"{100 * np.mean(shares):.0f}%" if shares else "-"
        cell = f"{acc.mean():5.1f} +- {acc.std():4.1f}"
        print(f"| {name:34s} | {cell:24s} | {share:36s} |")
    print(f"total {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
