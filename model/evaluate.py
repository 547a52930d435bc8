"""Evaluation on the target videos (the paper's protocol and its reported ``AccSf``).

Each video: 32 frames uniform over the whole video, centre crop; per stream the softmax over classes of every
per-frame logit vector, averaged over time; the two streams' averages summed (RGB only for SO_RGB); the
prediction is the argmax and the confidence its summed probability (0..2, the bank's priority).

``evaluate_run(run_dir, target_frames, ...)`` loads a finished training run and writes into ``out_dir``:
``predictions.csv`` (id, label, prediction, confidence), ``metrics.json`` (accuracy, per-class accuracy,
confusion matrix, run identity) and ``features.npz`` (target, and optionally source, RGB features for t-SNE).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from data.atomic import atomic_write, atomic_write_text


@torch.no_grad()
def predict(rgb, flow, loader, device, keep_features: bool = True) -> dict:
    """Run the streams over ``loader`` (items with ``rgb``, optional ``flow``, ``label``, ``index``).

    Returns numpy ``index``, ``labels``, ``pred``, ``confidence``, ``scores`` (N x C summed mean softmax) and
    a float32 tensor ``features`` (N x D, temporal mean of the RGB features).
    """
    was_training = [m.training for m in (rgb, flow) if m is not None]
    rgb.eval()
    if flow is not None:
        flow.eval()
    out = {"index": [], "labels": [], "scores": [], "features": []}
    try:
        for batch in loader:
            logits, features = rgb.forward_with_features(batch["rgb"].to(device, non_blocking=True))
            if hasattr(rgb, "video_logits"):  # CLIP (Table 5): cosine of the time-pooled frame features
                logits = rgb.video_logits(features)[..., None]
            scores = F.softmax(logits.float(), dim=1).mean(dim=-1)
            if flow is not None:
                scores = scores + F.softmax(flow(batch["flow"].to(device, non_blocking=True)).float(), dim=1).mean(-1)
            out["scores"].append(scores.cpu())
            if keep_features:
                out["features"].append(features.float().mean(dim=-1).cpu())
            out["index"].append(torch.as_tensor(batch["index"]).cpu())
            out["labels"].append(torch.as_tensor(batch["label"]).cpu())
    finally:
        for m, t in zip([m for m in (rgb, flow) if m is not None], was_training):
            m.train(t)
    scores = torch.cat(out["scores"]) if out["scores"] else torch.zeros(0, 0)
    conf, pred = scores.max(dim=1) if len(scores) else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
    return {"index": torch.cat(out["index"]).numpy() if out["index"] else np.zeros(0, np.int64),
            "labels": torch.cat(out["labels"]).numpy() if out["labels"] else np.zeros(0, np.int64),
            "pred": pred.numpy().astype(np.int64), "confidence": conf.numpy().astype(np.float32),
            "scores": scores.numpy(),
            "features": torch.cat(out["features"]) if out["features"] else torch.zeros(len(scores), 0)}


def accuracy_summary(pred, labels, num_classes: int) -> dict:
    """Accuracy, per-class accuracy (NaN for classes without videos) and confusion matrix (rows: true)."""
    pred, labels = np.asarray(pred, np.int64), np.asarray(labels, np.int64)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, pred), 1)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    return {"accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
            "per_class_accuracy": per_class, "confusion": confusion, "support": support}


def evaluate_run(run_dir, target_frames, target_flows=None, out_dir=None, source_frames=None, source_flows=None,
                 device: str = "cpu", batch_size: int = 8, num_workers: int = 0, class_names=None) -> dict:
    """Evaluate the last checkpoint of a training run on the target videos; write predictions, metrics and
    features to ``out_dir`` (default: ``run_dir/eval``). ``source_frames`` adds source features (16 frames,
    centre crop) to ``features.npz`` for the t-SNE figure."""
    from model.trainer import TrainConfig, build_streams, load_checkpoint  # the trainer imports this module
    from model.video_data import EvalClipDataset

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    cfg = TrainConfig(**ckpt["config"])
    num_classes = int(ckpt["num_classes"])
    rgb, flow, _ = build_streams(cfg, num_classes, pretrained=False)
    rgb.load_state_dict(ckpt["rgb"])
    if flow is not None:
        flow.load_state_dict(ckpt["flow"])
    dev = torch.device(device)
    rgb.to(dev)
    flow = flow.to(dev) if flow is not None else None
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cfg.amp and dev.type == "cuda")

    target = EvalClipDataset(target_frames, target_flows, cfg.eval_frames, cfg.crop_size, with_flow=flow is not None,
                             resize=cfg.resize)
    with autocast:
        res = predict(rgb, flow, DataLoader(target, batch_size=batch_size, num_workers=num_workers), dev)
    labels = target.labels[res["index"]]
    ids = [target.ids[i] for i in res["index"]]
    labelled = bool((labels >= 0).all()) and len(labels) > 0
    summary = accuracy_summary(res["pred"], labels, num_classes) if labelled else {}

    features = {"target_features": res["features"].numpy(), "target_labels": labels, "target_pred": res["pred"]}
    if source_frames is not None:
        source = EvalClipDataset(source_frames, source_flows, cfg.clip_frames, cfg.crop_size, with_flow=False,
                                 resize=cfg.resize)
        with autocast:
            src = predict(rgb, None, DataLoader(source, batch_size=batch_size, num_workers=num_workers), dev)
        features.update(source_features=src["features"].numpy(), source_labels=source.labels[src["index"]])
    _atomic_npz(out_dir / "features.npz", features)

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "label", "prediction", "confidence"])
    for i, item_id in enumerate(ids):
        w.writerow([item_id, int(labels[i]), int(res["pred"][i]), f"{res['confidence'][i]:.6f}"])
    atomic_write_text(out_dir / "predictions.csv", buf.getvalue())

    metrics = {"variant": cfg.variant, "seed": cfg.seed, "epoch": int(ckpt["epoch"]), "num_classes": num_classes,
               "num_videos": len(ids), "class_names": list(class_names) if class_names is not None else None,
               "streams": "rgb" if flow is None else "rgb+flow"}
    if labelled:
        metrics.update(accuracy=summary["accuracy"],
                       per_class_accuracy=[None if np.isnan(v) else float(v) for v in summary["per_class_accuracy"]],
                       confusion=summary["confusion"].tolist(), support=summary["support"].tolist())
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1))
    return metrics


def _atomic_npz(path: Path, arrays: dict) -> None:
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")  # numpy adds a missing .npz
