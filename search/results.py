"""A finished search as rows: ``results.csv``, the top-k trials, the table printed at the end.

Rows come from Ray Tune's experiment state (``ray.tune.ExperimentAnalysis``), so a resumed search
lists every trial once, the ones finished before the interruption included.

Ranking (the same rule as :mod:`search.study`): the trials that finished all their epochs
(``final`` in their last result), by the final value of the primary metric (mean over folds).
Trials an early-stopping scheduler cut short are listed in ``results.csv`` but are not candidates:
they never trained to the end, so their models are not the ones the search selects.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import pyarrow.fs
from ray.tune import ExperimentAnalysis

from trainables.metrics import METRICS

RESULTS_CSV = "results.csv"


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    status: str                # Ray's: TERMINATED, ERROR, ...
    config: dict[str, Any]
    last: dict[str, Any]       # the last reported result
    duration_s: float
    error: str
    checkpoint: str | None     # path of the latest checkpoint folder

    @property
    def complete(self) -> bool:
        return bool(self.last.get("final")) and self.status != "ERROR"

    @property
    def epochs_done(self) -> int:
        return int(self.last.get("epoch", 0) or 0)

    def value(self, metric: str) -> float | None:
        v = self.last.get(metric)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def error_reason(text: str) -> str:
    """The one-line reason of a trial error from Ray's error text (our ``TrialFailure`` line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "TrialFailure:" in ln:
            return ln.split("TrialFailure:", 1)[1].strip()
    return lines[-1] if lines else ""


def collect(experiment_path: str, storage_filesystem: pyarrow.fs.FileSystem | None = None) -> list[TrialRow]:
    analysis = ExperimentAnalysis(experiment_path, storage_filesystem=storage_filesystem)
    rows = []
    for t in analysis.trials:
        last = dict(t.last_result or {})
        error = ""
        if t.status == "ERROR":
            err = t.get_error()
            error = error_reason(str(err)) if err is not None else "failed"
        cpm = t.run_metadata.checkpoint_manager
        latest = cpm.latest_checkpoint_result.checkpoint if cpm.latest_checkpoint_result else None
        rows.append(TrialRow(
            trial_id=t.trial_id, status=t.status, config=dict(t.config), last=last,
            duration_s=float(last.get("time_total_s", 0.0) or 0.0), error=error,
            checkpoint=latest.path if latest is not None else None,
        ))
    order = {t.trial_id: _creation_index(t) for t in analysis.trials}
    return sorted(rows, key=lambda r: order[r.trial_id])  # creation order: the paper default first


def _creation_index(trial: Any) -> int:
    """Tune tags a trial ``<n>_<params>`` with its creation counter n (1-based)."""
    head = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def ranked(rows: list[TrialRow], metric: str, mode: str) -> list[TrialRow]:
    scored = [r for r in rows if r.complete and r.value(metric) is not None]
    return sorted(scored, key=lambda r: r.value(metric), reverse=(mode == "max"))


_FOLD_ACCURACY = re.compile(r"fold\d+_accuracy")


def pareto_front(rows: list[TrialRow], metrics: tuple[str, ...], modes: tuple[str, ...]) -> set[str]:
    """Trial ids of the complete trials no other complete trial dominates on all objectives."""
    sign = [1.0 if m == "max" else -1.0 for m in modes]
    pts = {r.trial_id: [s * r.value(m) for s, m in zip(sign, metrics)] for r in rows
           if r.complete and all(r.value(m) is not None for m in metrics)}

    def dominated(a: list[float]) -> bool:
        return any(all(x >= y for x, y in zip(b, a)) and any(x > y for x, y in zip(b, a)) for b in pts.values())

    return {tid for tid, p in pts.items() if not dominated(p)}


def csv_text(rows: list[TrialRow], sampled: list[str], pareto: set[str] | None = None,
             references: list[dict[str, Any]] | None = None) -> str:
    """One row per trial: id, status, epochs, duration, error, every metric (mean, std, per fold),
    then ``config/<key>`` (JSON values) for every config key, sampled keys first. ``references``:
    rows of the reference models on the same folds (status ``REFERENCE``, metric columns only)."""
    references = references or []
    folds = max((sum(1 for k in r.last if _FOLD_ACCURACY.fullmatch(k)) for r in rows), default=0)
    folds = max([folds, *(sum(1 for k in ref if _FOLD_ACCURACY.fullmatch(k)) for ref in references)])
    metric_cols = ["loss"] + [c for m in METRICS for c in (m, f"{m}_std")]
    metric_cols += [f"fold{k}_{m}" for k in range(folds) for m in METRICS]
    keys = list(dict.fromkeys([*sampled, *(k for r in rows for k in r.config)]))
    head = ["trial_id", "status", "epochs_done", "final", "duration_s", "error", *metric_cols]
    if pareto is not None:
        head.append("pareto")
    head += [f"config/{k}" for k in keys]
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(head)
    for r in rows:
        line = [r.trial_id, r.status, r.epochs_done, bool(r.last.get("final", False)), round(r.duration_s, 3), r.error]
        line += ["" if r.value(c) is None else r.value(c) for c in metric_cols]
        if pareto is not None:
            line.append(r.trial_id in pareto)
        line += [json.dumps(r.config[k]) if k in r.config else "" for k in keys]
        w.writerow(line)
    for ref in references:
        line = [ref["trial_id"], ref["status"], "", "", "", ref.get("error", "")]
        line += [ref.get(c, "") for c in metric_cols]
        line += [""] * (len(head) - len(line))
        w.writerow(line)
    return out.getvalue()


def write_text(text: str, experiment_path: str, filename: str, filesystem: pyarrow.fs.FileSystem | None = None) -> str:
    """Write ``<experiment>/<filename>`` atomically (local folder or ``s3://``-style URI)."""
    fs, path = pyarrow.fs.FileSystem.from_uri(experiment_path) if filesystem is None else (filesystem, experiment_path)
    fs.create_dir(path, recursive=True)
    target = f"{path.rstrip('/')}/{filename}"
    tmp = target + ".tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode())
    fs.move(tmp, target)
    return target


def read_text(experiment_path: str, filename: str) -> str:
    fs, path = pyarrow.fs.FileSystem.from_uri(experiment_path)
    with fs.open_input_stream(f"{path.rstrip('/')}/{filename}") as f:
        return f.read().decode()


def table(top: list[TrialRow], metric: str, sampled: list[str], extra_metrics: tuple[str, ...] = (), *,
          spread: bool = True) -> str:
    """The top configurations with mean ± std over folds of the metric (and a few others);
    ``spread=False`` (one hold-out split) shows the values alone."""
    if not top:
        return "no trial finished all its epochs"
    extra = [m for m in extra_metrics if not m.endswith("_std")]  # a fold spread is shown as ± already
    metrics = list(dict.fromkeys([metric, *extra, *(m for m in METRICS if m != metric)]))[:4]
    head = ["rank", "trial", *metrics, "configuration"]
    lines = []
    for i, r in enumerate(top, 1):
        cells = [str(i), r.trial_id]
        for m in metrics:
            v, s = r.value(m), r.value(f"{m}_std")
            cells.append("-" if v is None else f"{v:.4f} ± {s:.4f}" if s is not None and spread else f"{v:.4f}")
        cells.append(", ".join(f"{k}={_short(r.config[k])}" for k in sampled if r.config.get(k) is not None))
        lines.append(cells)
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths[:-1])) + "  " + cells[-1]
    return "\n".join([fmt(head), *(fmt(c) for c in lines)])


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
