"""``python -m search.robustness``: how the champion degrades as modalities (or report attributes)
go missing, as in the papers' robustness figures.

    python -m search.robustness --name STUDY [--storage DIR] [--rates 0,0.3,0.6,0.9]
                                [--metric M] [--trial ID] [--seed 0] [--out DIR]

The champion is the study's best trial (:meth:`search.select.results.StudyResults.best`, the rule the
search uses to pick the registered ``champion``). Its fold models are evaluated on their own
validation folds, so rate 0 reproduces the fold metrics the search reported (checked and printed),
and every figure is a mean ± std over the same folds. The fold models come from the trial's last
checkpoint; when it is not on disk (or not the final epoch) the folds are retrained from the
trial's config and seed, which the trainable makes deterministic.

Missing-modality protocol (seeded, per fold, target and rate):

- ``<modality>``: of the validation samples that have the modality *and* at least one other,
  ``round(rate * count)`` drawn at random lose it;
- ``all``: of all available (sample, modality) cells, ``round(rate * count)`` are dropped in a
  random order, skipping a cell whenever it is its sample's last modality; the achieved rate is
  reported (with M modalities at most (M-1)/M of the cells can go);

a dropped modality gets availability False, zero values and an all-False token mask (every
input ``<modality>.<representation>`` of it), which is what the dataset convention gives a
missing sample; models read inputs only through the availability mask.

Missing inputs at test time are not new to every model: what a model saw in training is its
trial's configuration. OmniFuse trains with ``modality_dropout`` (default 1.0, the paper's scheme:
each training sample's modalities replaced by a uniformly drawn non-empty subset of its available
ones), the concatenation baseline by default on complete inputs (``modality_dropout`` 0.0); a
comparison of the two at their defaults therefore mixes the model with its training-time dropout
(``benchmarks/robustness.py`` runs it both ways).

Attribute-missing (models reading ``<report>.attributes``, i.e. AlignedFusion and its
self-attention baseline): the paper's ``C-Tr+M-Te`` protocol on the validation folds,
:func:`trainables.attribute_missing.drop_attributes` at each rate.

Writes ``robustness.csv``, ``robustness.md`` and ``robustness.png`` (``--out``, default
``<study>/robustness``).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from search.prepare.cli import OneLineParser, add_storage_option
from search.prepare.errors import UsageError
from search.select.results import StudyResults, TrialResult, load_study
from search.trust.credentials import private_outputs
from trainables.backbone import logical_name
from trainables.data import MultimodalDataset
from trainables.metrics import METRICS, classification_metrics

DEFAULT_RATES = (0.0, 0.3, 0.6, 0.9)
ALL = "all"
ATTRIBUTES = "attributes"


# ----------------------------------------------------------------------------- the champion's folds
@dataclass
class FoldModels:
    """The fold models of one trial, each with its validation part (encoded, not standardised)."""

    trial: TrialResult
    trainers: list            # trainables.engine.FoldTrainer, one per fold
    source: str               # "checkpoint <path>" or "retrained from the config (seed ...)"

    @property
    def modalities(self) -> list[str]:
        """Logical modalities the models read."""
        return list(dict.fromkeys(logical_name(n) for n in self.trainers[0].modality_names))

    def predict(self, k: int, data: MultimodalDataset | None = None) -> np.ndarray:
        t = self.trainers[k]
        return t.predict_proba(t.val if data is None else data)


def fold_models(trial: TrialResult, log: Callable[[str], None] = lambda s: None) -> FoldModels:
    """Rebuild the fold models of ``trial`` exactly as its trainable trained them."""
    from trainables.trainable import Trial
    from trainables.trial_data import prepare_from_config

    config = dict(trial.config)
    method = config.get("method")
    if not method:
        raise UsageError(f"trial {trial.trial_id}: its config names no method")
    config["method"] = method
    data = prepare_from_config(config)
    folds = Trial(method, config, data)
    ckpt = Path(trial.checkpoint) if trial.checkpoint else None
    if ckpt is not None and _checkpoint_epoch(ckpt, trial) == folds.epochs:
        _restore(folds, ckpt, trial)
        source = f"checkpoint {ckpt}"
    else:
        log(f"trial {trial.trial_id}: no final checkpoint on disk; retraining its {len(folds.trainers)} fold(s) "
            f"for {folds.epochs} epochs from the config (seed {config['seed']})")
        while folds.epoch < folds.epochs:
            folds.step()
        source = f"retrained from the config (seed {config['seed']})"
    return FoldModels(trial, folds.trainers, source)


def _unrestorable(ckpt: Path, trial: TrialResult, exc: Exception) -> UsageError:
    from trainables.trainable import STATE_FILE

    detail = " ".join(str(exc).split())[:160]
    return UsageError(f"checkpoint {ckpt / STATE_FILE} of trial {trial.trial_id}: cannot be restored "
                      f"({type(exc).__name__}: {detail}); delete its folder to retrain the trial's folds from its config")


def _checkpoint_epoch(ckpt: Path, trial: TrialResult) -> int:
    """The epoch of the checkpoint (read with ``weights_only=True``: a pickle payload never runs);
    a corrupt, truncated or tampered ``state.pt`` is one line naming it."""
    from trainables.trainable import load_state

    try:
        return int(load_state(ckpt)["epoch"])
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise _unrestorable(ckpt, trial, exc) from None


def _restore(folds: Any, ckpt: Path, trial: TrialResult) -> None:
    try:
        folds.restore(ckpt)
    except Exception as exc:  # noqa: BLE001 - another model's weights, missing folds, ...
        raise _unrestorable(ckpt, trial, exc) from None


# ----------------------------------------------------------------------------- masking
def drop_modalities(data: MultimodalDataset, drop: dict[str, np.ndarray]) -> MultimodalDataset:
    """A copy where each logical modality ``m`` is missing for the samples ``drop[m]`` (bool [N])."""
    mods = {}
    for name, m in data.modalities.items():
        gone = drop.get(logical_name(name))
        if gone is None or not gone.any():
            mods[name] = m
            continue
        values = m.values.copy()
        if m.kind in ("vector", "tokens", "image"):
            values[gone] = 0
        else:
            values[gone] = ""
        token_mask = None if m.token_mask is None else np.where(gone[:, None], False, m.token_mask)
        mods[name] = replace(m, values=values, mask=m.mask & ~gone, token_mask=token_mask)
    return data.with_modalities(mods)


def availability(data: MultimodalDataset, modalities: list[str]) -> np.ndarray:
    """Bool [N, M] availability of the logical ``modalities``."""
    first = {}
    for name, m in data.modalities.items():
        first.setdefault(logical_name(name), m.mask)
    return np.stack([first[m] for m in modalities], axis=1)


def mask_modality(data: MultimodalDataset, modalities: list[str], target: str, rate: float,
                  rng: np.random.Generator) -> tuple[MultimodalDataset, float]:
    """Drop ``target`` (a logical modality or ``all``) at ``rate``, keeping >= 1 modality per
    sample (see module docs). Returns the data and the achieved fraction of cells dropped."""
    avail = availability(data, modalities)
    drop = np.zeros_like(avail)
    if target == ALL:
        cells = np.argwhere(avail)
        want = round(rate * len(cells))
        left = avail.sum(axis=1)
        done = 0
        for i, j in cells[rng.permutation(len(cells))]:
            if done == want:
                break
            if left[i] > 1:
                drop[i, j], left[i], done = True, left[i] - 1, done + 1
        base = len(cells)
    else:
        j = modalities.index(target)
        candidates = np.flatnonzero(avail[:, j] & (avail.sum(axis=1) > 1))
        chosen = rng.choice(candidates, size=round(rate * len(candidates)), replace=False)
        drop[chosen, j] = True
        base = max(int(avail[:, j].sum()), 1)
    out = drop_modalities(data, {m: drop[:, k] for k, m in enumerate(modalities)})
    return out, float(drop.sum()) / max(base, 1)


# ----------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Row:
    kind: str        # "modality" or "attribute"
    target: str      # logical modality, "all", or "attributes"
    rate: float
    achieved: float  # fraction actually dropped (mean over folds)
    mean: float
    std: float       # population std over folds, as the search reports it
    folds: tuple[float, ...]


def _rng(seed: int, fold: int, target: str, rate: float) -> np.random.Generator:
    return np.random.default_rng([seed, fold, sum(map(ord, target)), round(rate * 1000)])


def evaluate(models: FoldModels, metric: str, rates: tuple[float, ...] = DEFAULT_RATES, *, seed: int = 0,
             targets: list[str] | None = None, attributes: bool | None = None) -> list[Row]:
    """The champion's ``metric`` on its validation folds for every target and rate.

    ``targets`` default: every logical modality, then ``all`` (with >= 2 modalities).
    ``attributes`` default: when the models read a ``<report>.attributes`` input."""
    mods = models.modalities
    targets = targets if targets is not None else ([*mods, ALL] if len(mods) > 1 else [])
    rows: list[Row] = []
    for target in targets:
        if target != ALL and target not in mods:
            raise UsageError(f"modality {target!r}: the model reads {', '.join(mods)}")
        for rate in rates:
            vals, got = [], []
            for k, t in enumerate(models.trainers):
                data, achieved = mask_modality(t.val, mods, target, rate, _rng(seed, k, target, rate))
                vals.append(classification_metrics(data.labels, models.predict(k, data), t.class_names)[metric])
                got.append(achieved)
            rows.append(Row("modality", target, rate, float(np.mean(got)), float(np.mean(vals)), float(np.std(vals)),
                            tuple(vals)))
    attr_inputs = [n for n in models.trainers[0].modality_names if n.endswith(".attributes")]
    if attributes if attributes is not None else bool(attr_inputs):
        from trainables.attribute_missing import drop_attributes

        for rate in rates:
            vals = []
            for k, t in enumerate(models.trainers):
                data = drop_attributes(t.val, rate, int(_rng(seed, k, ATTRIBUTES, rate).integers(2**31)), attr_inputs[0])
                vals.append(classification_metrics(data.labels, models.predict(k, data), t.class_names)[metric])
            rows.append(Row("attribute", ATTRIBUTES, rate, rate, float(np.mean(vals)), float(np.std(vals)), tuple(vals)))
    return rows


def reproduces_search(models: FoldModels, metric: str, rows: list[Row]) -> bool | None:
    """Whether rate 0 gives the fold values the search reported (None if nothing to compare)."""
    reported = models.trial.fold_values(metric)
    zero = [r for r in rows if r.rate == 0.0 and r.kind == "modality"]
    if not zero or len(reported) != len(zero[0].folds):
        return None
    return bool(np.allclose(zero[0].folds, reported, atol=1e-6))


# ----------------------------------------------------------------------------- output
def to_table(rows: list[Row], metric: str) -> list[dict[str, str]]:
    return [{"kind": r.kind, "target": r.target, "rate": f"{r.rate:g}", "achieved_rate": f"{r.achieved:.3f}",
             metric: f"{r.mean:.4f} ± {r.std:.4f}", "folds": " ".join(f"{v:.4f}" for v in r.folds)} for r in rows]


def to_markdown(table: list[dict[str, str]]) -> str:
    cols = list(table[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r[c] for c in cols) + " |" for r in table]) + "\n"


def plot(rows: list[Row], metric: str, title: str, path: Path) -> dict[str, list[str]]:
    """The curves as a PNG: metric (mean ± std over folds) against the achieved missing rate, one
    line per target; a second panel for attribute-missing. Returns the axes labels written."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    kinds = [k for k in ("modality", "attribute") if any(r.kind == k for r in rows)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4.5), squeeze=False)
    labels: dict[str, list[str]] = {"xlabel": [], "ylabel": []}
    for ax, kind in zip(axes[0], kinds):
        for target in dict.fromkeys(r.target for r in rows if r.kind == kind):
            pts = [r for r in rows if r.kind == kind and r.target == target]
            ax.errorbar([r.achieved for r in pts], [r.mean for r in pts], yerr=[r.std for r in pts], marker="o",
                        capsize=3, label=target if target != ALL else "all modalities")
        ax.set_xlabel("missing rate (fraction dropped)" if kind == "modality" else "attribute missing rate (C-Tr+M-Te)")
        ax.set_ylabel(f"{metric} (validation, mean ± std over folds)")
        ax.set_title(title if kind == "modality" else "report attributes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        labels["xlabel"].append(ax.get_xlabel())
        labels["ylabel"].append(ax.get_ylabel())
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return labels


def write(rows: list[Row], metric: str, out: Path, title: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    table = to_table(rows, metric)
    paths = {"csv": out / "robustness.csv", "md": out / "robustness.md", "png": out / "robustness.png"}
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "target", "rate", "achieved_rate", f"{metric}_mean", f"{metric}_std", "folds"])
        for r in rows:
            w.writerow([r.kind, r.target, r.rate, round(r.achieved, 6), r.mean, r.std, " ".join(map(str, r.folds))])
    paths["md"].write_text(f"{title}\n\n" + to_markdown(table))
    plot(rows, metric, title, paths["png"])
    return paths


def parse_rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--rates {text}: expected comma-separated fractions, e.g. 0,0.3,0.6,0.9") from None
    if not rates or any(not 0.0 <= r <= 1.0 for r in rates):
        raise UsageError(f"--rates {text}: every rate must be in [0, 1]")
    return rates


def champion(study: StudyResults, trial_id: str | None, metric: str) -> TrialResult:
    if trial_id is None:
        return study.best(metric)
    trial = study.trial(trial_id)
    if not trial.complete:
        raise UsageError(f"--trial {trial_id}: did not finish its epochs (status {trial.status})")
    return trial


@private_outputs()  # what it writes is readable by the user only (FUSETUNE_UMASK)
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m search.robustness",
                           description="Evaluate a study's champion under missing modalities (and attributes).")
    parser.add_argument("--name", required=True, help="the study (search name under --storage)")
    add_storage_option(parser)
    parser.add_argument("--rates", default="0,0.3,0.6,0.9", help="missing rates (default 0,0.3,0.6,0.9)")
    parser.add_argument("--metric", default=None, help=f"one of {', '.join(METRICS)} (default: the study's)")
    parser.add_argument("--trial", default=None, metavar="ID", help="evaluate this trial instead of the champion")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random masking (default 0)")
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default <study>/robustness)")
    args = parser.parse_args(argv)
    try:
        rates = parse_rates(args.rates)
        study = load_study(args.name, args.storage)
        metric = args.metric or study.metric
        if metric not in METRICS:
            raise UsageError(f"--metric {metric}: expected one of {', '.join(METRICS)}")
        trial = champion(study, args.trial, metric)
        models = fold_models(trial, log=lambda s: print(s, file=sys.stderr))
        rows = evaluate(models, metric, rates, seed=args.seed)
    except UsageError as exc:
        print(f"python -m search.robustness: error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"python -m search.robustness: error: the model reads one modality ({models.modalities[0]}): "
              "nothing can go missing", file=sys.stderr)
        return 2
    title = f"{study.name}: trial {trial.trial_id} ({study.space or trial.config.get('method')})"
    paths = write(rows, metric, Path(args.out) if args.out else study.folder / "robustness", title)
    print(f"{title}; fold models: {models.source}")
    table = to_table(rows, metric)
    widths = {c: max(len(c), *(len(r[c]) for r in table)) for c in table[0]}
    print("  ".join(c.ljust(widths[c]) for c in table[0]))
    for r in table:
        print("  ".join(r[c].ljust(widths[c]) for c in r))
    same = reproduces_search(models, metric, rows)
    if same is not None:
        print(f"rate 0 reproduces the search's fold {metric}: {'yes' if same else 'NO'}")
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
