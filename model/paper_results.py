"""The paper's published accuracies (%) next to which an experiment report puts ours.

Only numbers this repository can cite are here: the full method's result on each real benchmark (the paper,
Table 1, mean over 3 runs), shown beside the full method's row of Table 2 and Table 5's I3D row. The other cells of Tables 2-5 and the Fig. 4 curves are not in the sources of
this repository: add them to ``PUBLISHED`` as (benchmark, experiment, run name) -> accuracy, citing the table.
"""
from __future__ import annotations

# (benchmark, experiment, run name) -> (accuracy %, where the paper publishes it).
PUBLISHED: dict[tuple[str, str, str], tuple[float, str]] = {}

# Runs that are the full method at the paper's settings, per experiment (their number is Table 1's).
FULL_METHOD_RUNS = {"table2": "FULL", "table5": "FULL, I3D"}


def paper_result(benchmark: str, experiment: str, run_name: str) -> tuple[float | None, str]:
    """(accuracy, source) for this run, or (None, "") where the paper's number is not known here."""
    if (benchmark, experiment, run_name) in PUBLISHED:
        return PUBLISHED[benchmark, experiment, run_name]
    if FULL_METHOD_RUNS.get(experiment) == run_name:
        from data.benchmarks import get_benchmark

        try:
            accuracy = get_benchmark(benchmark).paper_accuracy
        except KeyError:  # a benchmark of the user's own: the paper has no number for it
            return None, ""
        if accuracy is not None:
            return accuracy, "Table 1"
    return None, ""
