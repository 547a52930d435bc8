"""Report of one experiment (a paper table or Fig. 4): ``report.md`` with one row per run, our accuracy
(mean +- std over seeds, ddof 0, as ``model.report``) beside the paper's where it is published, ``results.csv``
with every seed, and for Fig. 4 one line plot per swept parameter (mean +- std error bars).

Input rows (plain dicts, one per run): ``name``, ``variant``, ``overrides``, ``sweep`` (the swept TrainConfig
field, or ""), ``value`` (its value), ``paper`` (accuracy % or None), ``paper_source``, ``eval_dirs`` (the
output folders of ``model.evaluate.evaluate_run``, one per seed).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from data.atomic import atomic_write, atomic_write_text
from model.report import load_runs


def summarize_row(row: dict) -> dict:
    """{"mean", "std", "seeds", "accuracies"} of one run over its seeds, accuracies in %."""
    runs = sorted(load_runs(row["eval_dirs"]), key=lambda r: r["seed"])
    acc = np.array([100 * r["accuracy"] for r in runs if r.get("accuracy") is not None])
    if not len(acc):
        raise ValueError(f"run {row['name']!r}: no accuracy in {row['eval_dirs']} (target videos without labels?)")
    return {"mean": float(acc.mean()), "std": float(acc.std()), "accuracies": acc.tolist(),
            "seeds": [r["seed"] for r in runs if r.get("accuracy") is not None]}


def _overrides_text(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "-"


def plot_sweep(points: list[tuple[float, dict]], parameter: str, path: Path, title: str) -> None:
    """Mean +- std accuracy against the swept value; a log x axis when the values span 20x or more."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(points, key=lambda p: p[0])
    x = np.array([p[0] for p in points], np.float64)
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
    ax.errorbar(x, [p[1]["mean"] for p in points], yerr=[p[1]["std"] for p in points], marker="o", capsize=3)
    if x.min() > 0 and x.max() / x.min() >= 20:
        ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.set_xlabel(parameter)
    ax.set_ylabel("target accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, fig.savefig, suffix=path.suffix)
    plt.close(fig)


def write_experiment_report(rows: list[dict], out_dir, benchmark: str, experiment: str, title: str = "") -> dict:
    """Write ``report.md``, ``results.csv`` and ``<parameter>.png`` per swept parameter into ``out_dir``;
    returns {"summary": run name -> summary, "files": [...]}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not rows:
        raise ValueError(f"experiment {experiment}: no runs to report")
    summary = {row["name"]: summarize_row(row) for row in rows}
    files = []

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["benchmark", "experiment", "run", "variant", "overrides", "seed", "accuracy", "paper", "dir"])
    for row in rows:
        s = summary[row["name"]]
        for seed, acc, d in zip(s["seeds"], s["accuracies"], sorted(load_runs(row["eval_dirs"]),
                                                                    key=lambda r: r["seed"])):
            w.writerow([benchmark, experiment, row["name"], row["variant"], _overrides_text(row["overrides"]), seed,
                        f"{acc:.2f}", "" if row["paper"] is None else row["paper"], d["dir"]])
    atomic_write_text(out_dir / "results.csv", buf.getvalue())
    files.append(out_dir / "results.csv")

    lines = [f"# {benchmark} {experiment}: {title}".rstrip(": "), "",
             "Last-epoch target accuracy (%), mean +- std (ddof 0) over seeds; evaluation on 32 uniform frames, "
             "centre crop, summed softmax of the streams. Paper: the published accuracy where this repository "
             "has it (- where not).", "",
             "| Run | Variant | Overrides | Accuracy | Paper | Seeds | Per seed |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        s = summary[row["name"]]
        paper = "-" if row["paper"] is None else f"{row['paper']:.1f} ({row['paper_source']})"
        lines.append(f"| {row['name']} | {row['variant']} | {_overrides_text(row['overrides'])} | "
                     f"{s['mean']:.1f} +- {s['std']:.1f} | {paper} | {len(s['seeds'])} | "
                     + ", ".join(f"{a:.1f}" for a in s["accuracies"]) + " |")

    sweeps = {}
    for row in rows:
        if row.get("sweep"):
            sweeps.setdefault(row["sweep"], []).append((float(row["value"]), summary[row["name"]]))
    if sweeps:
        lines += ["", "## Sweeps (mean +- std over seeds)", ""]
        for parameter, points in sweeps.items():
            path = out_dir / f"{parameter}.png"
            plot_sweep(points, parameter, path, f"{benchmark} FULL: accuracy vs {parameter}")
            files.append(path)
            lines += [f"![{parameter}]({path.name})", ""]
    atomic_write_text(out_dir / "report.md", "\n".join(lines).rstrip() + "\n")
    files.append(out_dir / "report.md")
    return {"summary": summary, "files": [str(f) for f in files]}
