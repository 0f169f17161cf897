"""What a search writes of its trials (the rows of :mod:`search.select.results`): ``results.csv``
(:func:`csv_text`; written whole by :func:`search.trust.files.write_text`) and the table of the best
configurations the summary prints (:func:`table`).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from search.select.results import TrialResult, fold_count
from trainables.metrics import METRICS


# ----------------------------------------------------------------------------- results.csv and the table
def csv_text(rows: list[TrialResult], sampled: list[str], pareto: set[str] | None = None,
             references: list[dict[str, Any]] | None = None) -> str:
    """One row per trial: id, status, epochs, duration, error, every metric (mean, std, per fold),
    then ``config/<key>`` (JSON values) for every config key, sampled keys first. ``references``:
    rows of the reference models on the same folds (status ``REFERENCE``, metric columns only)."""
    references = references or []
    folds = max((r.n_folds for r in rows), default=0)
    folds = max([folds, *(fold_count(ref) for ref in references)])
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


def table(top: list[TrialResult], metric: str, sampled: list[str], extra_metrics: tuple[str, ...] = (), *,
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

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths[:-1])) + "  " + cells[-1]

    return "\n".join([fmt(head), *(fmt(c) for c in lines)])


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
