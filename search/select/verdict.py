"""The confirmation's verdict: the candidates, their fresh fold scores, the champion and the table.

Pure computation over what the confirmation jobs (:mod:`search.select.confirm`) measured: a
:class:`Candidate` carries its R x k fresh fold scores (and its probabilities), :func:`verdict`
ranks them, :func:`ensemble_candidate` scores an ensemble on its members' probabilities and
:func:`csv_text`, :func:`table` and :func:`summary` write the result down. No Ray here.

The champion is the model candidate (a trial, the paper default or the ensemble) with the best
mean over the R x k fresh fold scores, not the best search figure (a single model before the
ensemble on an exact tie); the *selection gap* is its search figure minus its confirmed figure. Every
candidate's ``p_value`` is the corrected resampled t-test (:mod:`search.select.stats`) of its R x k fold
scores against the champion's, paired fold by fold.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from search.prepare.objective import Objective
from search.select import ensemble, references
from search.select.oof import OutOfFold
from search.select.stats import TEST_NAME, corrected_resampled_ttest, test_train_ratio
from trainables.metrics import METRICS

PAPER_DEFAULT = "paper-default"
SEED_STRIDE = 1000
"""Fresh repetition r (0-based) splits with ``seed + SEED_STRIDE * (r + 1)`` and initialises fold k
with that + k: disjoint from the search's seeds for fewer than ``SEED_STRIDE`` folds."""
ENSEMBLE_KIND = "ensemble"


def fresh_seeds(seed: int, repeats: int) -> list[int]:
    return [seed + SEED_STRIDE * (r + 1) for r in range(repeats)]


@dataclass(frozen=True)
class Scheme:
    """What makes two confirmed figures comparable: the same fresh splits, budget and metric."""

    folds: int
    val_fraction: float
    seeds: tuple[int, ...]
    metric: str
    fingerprint: str

    @property
    def ratio(self) -> float:
        return test_train_ratio(self.folds, self.val_fraction)

    def key(self) -> str:
        """A short, stable string kept as a model-version tag (``fusetune.confirm_scheme``)."""
        return json.dumps({"folds": self.folds, "val_fraction": self.val_fraction, "seeds": list(self.seeds),
                           "metric": self.metric, "data": self.fingerprint[:16]}, sort_keys=True)


@dataclass
class Candidate:
    name: str                       # trial id, "paper-default", "reference:<name>", "champion:v<N>", "ensemble"
    kind: str                       # "model", "reference" or "ensemble"
    config: dict[str, Any]          # the full trial config; a reference {"reference": name}; the ensemble
                                    # its members and weights
    search_value: float | None = None
    trial_id: str | None = None     # the search trial it is (a model of this search)
    incumbent: bool = False         # the registered champion of an earlier search
    folds: dict[str, np.ndarray] = field(default_factory=dict)        # metric -> R x k fresh fold scores
    search_folds: dict[str, np.ndarray] = field(default_factory=dict)  # references: the search's folds
    error: str = ""
    probs: dict[int, OutOfFold] = field(default_factory=dict)  # repeat (SEARCH_REPEAT too) -> probabilities
    ensemble: ensemble.Ensemble | None = None                  # kind "ensemble": the selection
    members: list[Candidate] = field(default_factory=list)     # kind "ensemble": its members, in its order

    @property
    def is_model(self) -> bool:
        """A model this search can hand off: a trial, the paper default, the ensemble (not a reference)."""
        return self.kind in ("model", ENSEMBLE_KIND)

    def confirmed(self, metric: str) -> float | None:
        v = self.folds.get(metric)
        return float(np.mean(v)) if v is not None and len(v) else None

    def confirmed_std(self, metric: str) -> float | None:
        v = self.folds.get(metric)
        return float(np.std(v)) if v is not None and len(v) else None


def _same_point(config: dict[str, Any], point: dict[str, Any]) -> bool:
    return all(config.get(k) == v for k, v in point.items())


def paper_default(rows: list, point: dict[str, Any], fallback: dict[str, Any], metric: str) -> Candidate:
    """The paper default: the search's trial of that point (its search figure if it ran every
    epoch), else the point on the search's fixed keys."""
    for r in rows:
        if _same_point(r.config, point):
            value = r.value(metric) if r.complete else None
            return Candidate(PAPER_DEFAULT, "model", dict(r.config), value, r.trial_id)
    return Candidate(PAPER_DEFAULT, "model", {**fallback, **point})


# --------------------------------------------------------------------------------- the ensemble
def ensemble_candidate(chosen: ensemble.Ensemble, members: dict[str, Candidate], scheme: Scheme) -> Candidate:
    """The ensemble as a candidate: its search figure is the selection's score on the search's
    folds; its fresh fold scores those of its members' weighted probabilities on each fresh fold."""
    c = Candidate(ensemble.NAME, ENSEMBLE_KIND, chosen.describe(), chosen.score, ensemble=chosen,
                  members=[members[m] for m in chosen.members])
    missing = [m for m in chosen.members if members[m].error or any(r not in members[m].probs
                                                                        for r in range(len(scheme.seeds)))]
    if missing:
        c.error = f"member {missing[0]} has no probabilities on every fresh repetition"
        return c
    scores: dict[str, list[float]] = {m: [] for m in METRICS}
    for r in range(len(scheme.seeds)):
        parts = {m: members[m].probs[r] for m in chosen.members}
        first = parts[chosen.members[0]]
        for p in parts.values():
            if not (np.array_equal(p.index, first.index) and np.array_equal(p.fold, first.fold)):
                c.error = f"members were not confirmed on the same fresh folds (repetition {r})"
                return c
        combined = chosen.combine({m: p.probs for m, p in parts.items()})
        for k in np.unique(first.fold):
            on = first.fold == k
            for m in METRICS:
                scores[m].append(ensemble.metric_value(m, first.labels[on], combined[on]))
    c.folds = {m: np.array(v) for m, v in scores.items()}
    return c


# --------------------------------------------------------------------------------- the verdict
@dataclass
class Confirmation:
    candidates: list[Candidate]      # best confirmed first; failed ones last
    scheme: Scheme
    mode: str
    champion: Candidate | None       # the best model candidate of this search (not an incumbent)
    p_values: dict[str, float | None]

    @property
    def metric(self) -> str:
        return self.scheme.metric

    @property
    def selection_gap(self) -> float | None:
        c = self.champion
        if c is None or c.search_value is None:
            return None
        return float(c.search_value - c.confirmed(self.metric))

    def models(self) -> list[Candidate]:
        """This search's model candidates, best confirmed first (what gets registered); the paper
        default once when it is also one of the top-k trials."""
        out, seen = [], set()
        for c in self.candidates:
            key = json.dumps(c.config, sort_keys=True, default=str)
            if c.is_model and not c.incumbent and not c.error and key not in seen:
                seen.add(key)
                out.append(c)
        return out

    def ensemble(self) -> Candidate | None:
        return next((c for c in self.candidates if c.kind == ENSEMBLE_KIND), None)

    def best_single(self) -> Candidate | None:
        """The best confirmed single model of this search (a trial or the paper default)."""
        return next((c for c in self.candidates if c.kind == "model" and not c.incumbent and not c.error), None)

    def best_reference(self) -> Candidate | None:
        refs = [c for c in self.candidates if c.kind == "reference" and not c.error]
        return refs[0] if refs else None


def verdict(candidates: list[Candidate], scheme: Scheme, mode: str) -> Confirmation:
    sign = Objective(scheme.metric, mode).sign
    ok = sorted((c for c in candidates if not c.error), key=lambda c: -sign * c.confirmed(scheme.metric))
    ordered = ok + [c for c in candidates if c.error]
    models = [c for c in ok if c.is_model and not c.incumbent]
    # stable: a tie with its own trial names the trial; a single model goes before the ensemble
    models.sort(key=lambda c: (c.kind == ENSEMBLE_KIND, c.name == PAPER_DEFAULT))
    models.sort(key=lambda c: -sign * c.confirmed(scheme.metric))
    champion = models[0] if models else None
    p_values: dict[str, float | None] = {}
    for c in ok:
        if champion is None or c is champion:
            p_values[c.name] = None
            continue
        p_values[c.name] = corrected_resampled_ttest(c.folds[scheme.metric], champion.folds[scheme.metric], scheme.ratio).p
    return Confirmation(ordered, scheme, mode, champion, p_values)


def _fmt(v: float | None, digits: int = 4) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def csv_text(conf: Confirmation) -> str:
    """``confirmation.csv``: one row per candidate, best confirmed first."""
    m = conf.metric
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["candidate", "kind", "trial_id", f"search_{m}", f"confirmed_{m}", f"confirmed_{m}_std", "p_value", "n_scores",
                *(f"confirmed_{o}" for o in METRICS if o != m), "error", "config"])
    for c in conf.candidates:
        p = conf.p_values.get(c.name)
        w.writerow([c.name, "incumbent" if c.incumbent else c.kind, c.trial_id or "",
                    "" if c.search_value is None else c.search_value,
                    "" if c.confirmed(m) is None else c.confirmed(m), "" if c.confirmed_std(m) is None else c.confirmed_std(m),
                    "" if p is None else p, len(c.folds.get(m, ())),
                    *("" if c.confirmed(o) is None else c.confirmed(o) for o in METRICS if o != m),
                    c.error, json.dumps(c.config, sort_keys=True, default=str)])
    return out.getvalue()


def table(conf: Confirmation) -> str:
    m = conf.metric
    head = ["candidate", f"search {m}", f"confirmed {m}", "p vs champion"]
    lines = []
    for c in conf.candidates:
        same = c.name == PAPER_DEFAULT and c.trial_id and any(o.name == c.trial_id for o in conf.candidates)
        label = c.name + (f" (= {c.trial_id})" if same else "") + (
            " (champion)" if c is conf.champion else " (registered champion)" if c.incumbent else "")
        if c.error:
            lines.append([label, _fmt(c.search_value), f"failed: {c.error}", ""])
            continue
        p = conf.p_values.get(c.name)
        lines.append([label, _fmt(c.search_value), f"{c.confirmed(m):.4f} ± {c.confirmed_std(m):.4f}",
                      "-" if p is None else f"{p:.3g}"])
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    return "\n".join("  ".join(x.ljust(wd) for x, wd in zip(row, widths)).rstrip() for row in [head, *lines])


def summary(conf: Confirmation) -> str:
    """The plain sentences under the table: selection gap, and whether the champion beats the references."""
    m, sign = conf.metric, Objective(conf.metric, conf.mode).sign
    n = len(conf.scheme.seeds)
    k = "hold-out split" if conf.scheme.folds == 0 else f"{conf.scheme.folds}-fold CV"
    lines = [f"confirmed on {n} fresh repetition(s) of {k} (split seeds {', '.join(map(str, conf.scheme.seeds))}); "
             f"p: {TEST_NAME} against the champion"]
    c = conf.champion
    if c is None:
        lines.append("no model candidate finished its confirmation: no champion")
        return "\n".join(lines)
    ens = conf.ensemble()
    if ens is not None and ens.ensemble is not None:
        single = conf.best_single()
        verdict_line = ("it is the champion" if c is ens else f"it does not beat {c.name} on the fresh folds")
        lines.append(f"ensemble chosen on the search's folds: {ens.ensemble}; " + (
            f"failed: {ens.error}" if ens.error else
            f"confirmed {ens.confirmed(m):.4f}" + (f" vs the best single model {single.name} {single.confirmed(m):.4f}"
                                                    if single is not None else "") + f"; {verdict_line}"))
        if c is ens and all(member.startswith(references.PREFIX) for member in ens.ensemble.members):
            lines.append(f"The ensemble keeps only reference models ({', '.join(ens.ensemble.members)}): the model "
                         "handed off is a reference model, not the searched method (--ensemble trials insists on it).")
    gap = conf.selection_gap
    if gap is not None:
        lines.append(f"selection gap of the champion {c.name}: search {c.search_value:.4f} - confirmed "
                     f"{c.confirmed(m):.4f} = {gap:+.4f}")
    ref = conf.best_reference()
    if ref is not None:
        d = c.confirmed(m) - ref.confirmed(m)
        p = conf.p_values.get(ref.name)
        if sign * d <= 0:
            lines.append(f"The champion ({c.name}, {m} {c.confirmed(m):.4f}) does not beat the reference model "
                         f"{ref.name} ({ref.confirmed(m):.4f}) on the fresh folds.")
        elif p is None or p >= 0.05:
            lines.append(f"The champion ({c.name}) beats the best reference {ref.name} by {d:+.4f} {m}, "
                         f"but not significantly (p = {'-' if p is None else f'{p:.3g}'}).")
        else:
            lines.append(f"The champion ({c.name}) beats the best reference {ref.name} by {d:+.4f} {m} (p = {p:.3g}).")
    return "\n".join(lines)
