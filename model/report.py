"""Benchmark report from evaluated runs: ``results.csv``, ``report.md`` with a Table 2-style ablation,
per-class accuracy, confusion-matrix PNGs and a t-SNE PNG of source and target features (Fig. 5 style).

Input: the output directories of ``model.evaluate.evaluate_run`` (each with ``metrics.json`` and
``features.npz``). Accuracy of a variant = mean +- std (population std, ddof 0) over seeds of the last-epoch
target accuracy, as the paper reports it.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from data.atomic import atomic_write, atomic_write_text

VARIANT_ORDER = ("SO_RGB", "SO_RGB_FLOW", "SO_RGB_FLOW_CFB", "FULL")
VARIANT_LABELS = {"SO_RGB": "Source only, RGB", "SO_RGB_FLOW": "Source only, RGB + flow",
                  "SO_RGB_FLOW_CFB": "+ Category-aware Flow Memory Bank", "FULL": "+ video pace prediction (full)"}


def load_runs(eval_dirs) -> list[dict]:
    """metrics.json of every evaluated run, with ``dir`` added."""
    runs = []
    for d in eval_dirs:
        d = Path(d)
        m = json.loads((d / "metrics.json").read_text())
        m["dir"] = str(d)
        runs.append(m)
    return runs


def _order(variants) -> list[str]:
    known = [v for v in VARIANT_ORDER if v in variants]
    return known + sorted(v for v in variants if v not in VARIANT_ORDER)


def summarize(runs: list[dict]) -> dict:
    """variant -> {"mean", "std", "seeds", "accuracies", "per_class" (mean over seeds)}; accuracies in %."""
    out = {}
    for v in _order({r["variant"] for r in runs}):
        rs = sorted((r for r in runs if r["variant"] == v and r.get("accuracy") is not None), key=lambda r: r["seed"])
        if not rs:
            continue
        acc = np.array([100 * r["accuracy"] for r in rs])
        per_class = np.array([[np.nan if x is None else 100 * x for x in r["per_class_accuracy"]] for r in rs])
        out[v] = {"mean": float(acc.mean()), "std": float(acc.std()), "seeds": [r["seed"] for r in rs],
                  "accuracies": acc.tolist(), "per_class": np.nanmean(per_class, axis=0).tolist()}
    return out


def plot_confusion(confusion: np.ndarray, class_names, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(cm)
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * n, 0.8 + 0.5 * n), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=90 if n > 8 else 45, ha="right", fontsize=7)
    ax.set_yticks(range(n), class_names, fontsize=7)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_tsne(source_features, source_labels, target_features, target_labels, class_names, path: Path,
              title: str, seed: int = 0) -> None:
    """t-SNE of source (circles) and target (crosses) features coloured by class; PCA to 50 dims first when
    the features are wider (scikit-learn, fixed random_state)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.concatenate([source_features, target_features]).astype(np.float64)
    ns = len(source_features)
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    emb = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    labels = np.concatenate([source_labels, target_labels])
    for c, name in enumerate(class_names):
        color = cmap(c % cmap.N)
        s = np.flatnonzero(labels[:ns] == c)
        t = ns + np.flatnonzero(labels[ns:] == c)
        ax.scatter(emb[s, 0], emb[s, 1], s=14, marker="o", color=color, alpha=0.7, label=f"{name}")
        ax.scatter(emb[t, 0], emb[t, 1], s=18, marker="x", color=color, alpha=0.9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title}\n(o source, x target)", fontsize=9)
    if len(class_names) <= 20:
        ax.legend(fontsize=6, markerscale=0.8, loc="best")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def write_report(eval_dirs, out_dir, benchmark: str = "", class_names=None, tsne_variant: str | None = None) -> dict:
    """Write ``results.csv``, ``report.md``, ``confusion_<variant>.png`` and ``tsne_<variant>.png`` into
    ``out_dir``; returns {"summary": ..., "files": [...]}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(eval_dirs)
    if not runs:
        raise ValueError("no evaluated runs to report")
    num_classes = runs[0]["num_classes"]
    class_names = list(class_names or runs[0].get("class_names") or [str(c) for c in range(num_classes)])
    summary = summarize(runs)
    files = []

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["benchmark", "variant", "seed", "accuracy", "epoch", "num_videos", "dir"])
    for r in sorted(runs, key=lambda r: (_order({x["variant"] for x in runs}).index(r["variant"]), r["seed"])):
        acc = r.get("accuracy")
        w.writerow([benchmark, r["variant"], r["seed"], "" if acc is None else f"{100 * acc:.2f}", r["epoch"] + 1,
                    r["num_videos"], r["dir"]])
    atomic_write_text(out_dir / "results.csv", buf.getvalue())
    files.append(out_dir / "results.csv")

    for v in summary:
        confusion = sum(np.asarray(r["confusion"]) for r in runs if r["variant"] == v and r.get("confusion"))
        p = out_dir / f"confusion_{v}.png"
        plot_confusion(confusion, class_names, p, f"{benchmark} {v}: confusion (all seeds)")
        files.append(p)

    tsne_variant = tsne_variant or next((v for v in reversed(_order(summary)) if v in summary), None)
    tsne_file = None
    if tsne_variant is not None:
        run = min((r for r in runs if r["variant"] == tsne_variant), key=lambda r: r["seed"])
        fpath = Path(run["dir"]) / "features.npz"
        if fpath.exists():
            f = np.load(fpath)
            if "source_features" in f:
                tsne_file = out_dir / f"tsne_{tsne_variant}.png"
                plot_tsne(f["source_features"], f["source_labels"], f["target_features"], f["target_labels"],
                          class_names, tsne_file, f"{benchmark} {tsne_variant} seed {run['seed']}: RGB features")
                files.append(tsne_file)

    lines = [f"# {benchmark} results".rstrip(), "",
             "Last-epoch target accuracy (%), mean +- std (ddof 0) over seeds; evaluation on 32 uniform frames, "
             "centre crop, summed softmax of the streams.", "",
             "## Ablation (Table 2)", "", "| Variant | | Accuracy | Seeds | Per seed |", "|---|---|---|---|---|"]
    for v, s in summary.items():
        lines.append(f"| {v} | {VARIANT_LABELS.get(v, '')} | {s['mean']:.1f} +- {s['std']:.1f} | {len(s['seeds'])} | "
                     + ", ".join(f"{a:.1f}" for a in s["accuracies"]) + " |")
    lines += ["", "## Per-class accuracy (mean over seeds)", "",
              "| Class | " + " | ".join(summary) + " |", "|---" * (len(summary) + 1) + "|"]
    for c, name in enumerate(class_names):
        cells = [("-" if np.isnan(s["per_class"][c]) else f"{s['per_class'][c]:.1f}") for s in summary.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Confusion matrices", ""]
    lines += [f"![{v}](confusion_{v}.png)" for v in summary]
    if tsne_file is not None:
        lines += ["", "## t-SNE of source and target features (Fig. 5 style)", "", f"![t-SNE]({tsne_file.name})"]
    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
    files.append(out_dir / "report.md")
    return {"summary": summary, "files": [str(f) for f in files]}


def _save(fig, path: Path) -> None:
    atomic_write(path, fig.savefig, suffix=path.suffix)  # savefig picks the format by extension
