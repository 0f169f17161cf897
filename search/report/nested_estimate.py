"""The nested estimate's report: ``nested.json`` and its printed table (``python -m search.nested``).

The estimate (mean ± std of the outer champions' held-out scores), each outer search, the single
model and the ensemble, the baselines on the same outer folds, p-values, and how often each
configuration won.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from search.prepare.config import SearchConfig
from trainables.metrics import METRICS


@dataclass
class Outer:
    """One outer fold's search (``search.nested`` launches it) and what its champion scored on the held-out fold."""

    fold: int
    search: str
    returncode: int | None = None
    champion: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)   # the handed-off model (the registered champion)
    test_size: int = 0
    error: str = ""
    single: dict[str, float] = field(default_factory=dict)   # the best confirmed single model
    ensemble: dict[str, float] = field(default_factory=dict)  # the confirmed ensemble
    members: str = ""                                         # the ensemble's members and weights


def _mean_std(rows: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    mean = {m: float(np.mean([r[m] for r in rows])) for m in METRICS if rows and all(m in r for r in rows)}
    std = {m: float(np.std([r[m] for r in rows])) for m in mean}
    return mean, std


def p_values(metric: str, outer_folds: int, handed_off: list[dict[str, float]],
             others: dict[str, list[dict[str, float]]]) -> dict[str, float | None]:
    """The corrected resampled t-test (:mod:`search.select.stats`) of the handed-off model's outer-fold scores
    against each other row's, paired by outer fold (test/train ratio 1/(N-1))."""
    from search.select.stats import corrected_resampled_ttest

    out: dict[str, float | None] = {}
    a = np.array([s.get(metric, np.nan) for s in handed_off])
    for name, rows in others.items():
        b = np.array([s.get(metric, np.nan) for s in rows])
        ok = len(a) == len(b) and len(a) > 1 and np.isfinite(a).all() and np.isfinite(b).all()
        p = corrected_resampled_ttest(a, b, 1.0 / (outer_folds - 1)).p if ok else None
        out[name] = None if p is None or not math.isfinite(p) else float(p)
    return out


def repeats(outers: list[Outer], sampled: list[str]) -> dict[str, list[tuple[str, int]]]:
    """Per dimension: each chosen value and how many outer folds chose it, most frequent first."""
    out = {}
    for dim in sampled:
        values = [json.dumps(o.config[dim]) for o in outers if dim in o.config]
        if values:
            out[dim] = Counter(values).most_common()
    return out


def nested_report(cfg: SearchConfig, outer_folds: int, outers: list[Any], base: dict[str, list[dict[str, float]]],
                  sampled: list[str]) -> dict[str, Any]:
    """``nested.json``: the estimate (mean ± std of the outer champions' test scores), how it was
    selected, each outer search, the single model and the ensemble, the baselines on the same
    outer folds, p-values, and how often each configuration won."""
    ok = [o for o in outers if not o.error]
    estimate, std = _mean_std([o.scores for o in ok])
    compared = {"single model": [o.single for o in ok], "ensemble": [o.ensemble for o in ok]}
    return {
        "estimate": estimate, "std": std, "metric": cfg.primary_metric, "outer_folds": outer_folds,
        "selection": f"per outer fold: the champion of a {cfg.num_samples}-trial {cfg.sampler}/{cfg.scheduler} search "
                     f"confirmed on {cfg.confirm_repeats} fresh repetition(s) of {cfg.folds}-fold CV of the outer "
                     "training part, scored once on the outer test fold",
        "outer": [{"fold": o.fold, "search": o.search, "champion": o.champion, "config": o.config, "scores": o.scores,
                   "test_size": o.test_size, "single": o.single, "ensemble": o.ensemble, "members": o.members,
                   **({"error": o.error} if o.error else {})} for o in outers],
        "models": {k: dict(zip(("estimate", "std"), _mean_std(v))) for k, v in compared.items() if v and all(v)},
        "baselines": {k: dict(zip(("estimate", "std"), _mean_std(v))) for k, v in base.items()},
        "p_values": p_values(cfg.primary_metric, outer_folds, [o.scores for o in ok],
                             {**compared, **{k: [v[o.fold - 1] for o in ok] for k, v in base.items()}}),
        "repeats": {k: [[v, n] for v, n in c] for k, c in repeats(ok, sampled).items()},
    }


def render(report: dict[str, Any], metric: str) -> str:
    lines = [f"\nnested estimate ({report['selection']}):"]
    for o in report["outer"]:
        if "error" in o:
            lines.append(f"  outer {o['fold']}: {o['error']}")
            continue
        cfg = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in o["config"].items())
        lines.append(f"  outer {o['fold']}: {metric} {o['scores'].get(metric, float('nan')):.4f} on {o['test_size']} "
                     f"held-out samples; champion {o['champion']}" + (f": {cfg}" if cfg else "")
                     + (f" ({o['members']})" if o.get("members") and o["champion"] == "ensemble" else ""))
    lines.append("estimate (mean ± std over outer folds; p: corrected resampled t-test of the handed-off model "
                 "against the row, paired by outer fold):")
    rows = [("handed off (this procedure)", report["estimate"], report["std"])]
    rows += [(k, b["estimate"], b["std"]) for k, b in report.get("models", {}).items()]
    rows += [(k, b["estimate"], b["std"]) for k, b in report["baselines"].items()]
    p = report.get("p_values", {})
    width = max(len(r[0]) for r in rows)
    lines.append("  " + " " * width + "  " + "  ".join(f"{m:>17}" for m in METRICS))
    lines[-1] += "  p"
    for label, est, sd in rows:
        lines.append("  " + label.ljust(width) + "  " + "  ".join(
            f"{est[m]:.4f} ± {sd[m]:.4f}".rjust(17) if m in est else " " * 17 for m in METRICS)
            + (f"  {p[label]:.3g}" if p.get(label) is not None else ""))
    best_ref = max(((k, b["estimate"].get(metric)) for k, b in report["baselines"].items() if b["estimate"]),
                   key=lambda kv: kv[1], default=None)
    tuned = report["estimate"].get(metric)
    if best_ref is not None and tuned is not None and tuned <= best_ref[1]:
        lines.append(f"The handed-off model does not beat {best_ref[0]} on {metric} in this nested estimate "
                     f"({tuned:.4f} vs {best_ref[1]:.4f}).")
    lines.append("chosen values per dimension (value x outer folds):")
    for dim, counts in report["repeats"].items():
        lines.append(f"  {dim}: " + ", ".join(f"{v} x{n}" for v, n in counts))
    return "\n".join(lines)
