"""Search efficiency on OmniFuse / breast-tcga: best macro F1 reached vs. compute spent, for the
paper's grid search, random search, and TPE with and without ASHA.

The space is ``omnifuse-paper``: the six hyperparameters the OmniFuse paper says it grid-searched
around its initial values (K, alpha, beta, lambda1..3), with the paper's grid-style values
(3 each, 3^6 = 729 points) and continuous ranges around them; the training settings are fixed
(lr 1e-3), and every trial trains 20 epochs. Every strategy is a real ``python -m search.run`` (Ray Tune + Optuna +
MLflow), on the same folds (``--seed 0``: 3-fold CV of the 150 training samples) and the same
initialisation; repeats differ only in ``--sampler-seed``:

* grid: all 729 points, every one for the full 20 epochs (FIFO), sampler seed 0 (the order is
  seeded, the set of points is not);
* random, TPE (FIFO), TPE + ASHA (grace 5 epochs, reduction factor 3): 40 trials each, sampler
  seeds 0, 1, 2.

Compute is counted in trial-epochs (one epoch of one trial trains every fold once): the x-axis
does not depend on the machine's load. A configuration counts once its trial has trained all 20
epochs (trials ASHA stopped early are never candidates, as in the search itself); "best so far"
is walked in the order the epochs were reported. Then, because the best of many noisy CV
estimates is optimistic (the grid picks the maximum of 729), every strategy's champion is
re-scored on fresh folds (5-fold, fold seed 1) that no search saw.

    FUSETUNE_DATA_DIR=../shared/data python benchmarks/search_efficiency.py            # ~55 min on 2 cores
    FUSETUNE_DATA_DIR=../shared/data python benchmarks/search_efficiency.py --quick    # ~2 min
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from searches import machine, pm, run_search

from search.select.results import StudyResults
from spaces import get_space

METRIC = "macro_f1"
SPACE = "omnifuse-paper"


@dataclass(frozen=True)
class Strategy:
    label: str
    sampler: str
    scheduler: str
    trials: int | None  # None: the whole grid


STRATEGIES = (
    Strategy("grid (paper values)", "grid", "fifo", None),
    Strategy("random", "random", "fifo", 40),
    Strategy("TPE", "tpe", "fifo", 40),
    Strategy("TPE + ASHA", "tpe", "asha", 40),
)


def curve(study: StudyResults, metric: str = METRIC) -> list[tuple[int, float]]:
    """(cumulative trial-epochs, best final value so far) at every epoch report, in report order."""
    events = []  # (time, trial, epoch, the trial's final value when this report is its last, else None)
    for index, trial in enumerate(sorted(study.trials, key=lambda t: t.trial_id)):
        value = trial.value(metric) if trial.complete else None
        for r in trial.history:
            events.append((r.get("timestamp", 0), index, int(r.get("epoch", 0) or 0), value if r.get("final") else None))
    events.sort(key=lambda e: e[:3])
    best, out = -np.inf, []
    for spent, (*_, value) in enumerate(events, start=1):
        if value is not None:
            best = max(best, value)
        out.append((spent, best))
    return out


def spent_to_reach(points: list[tuple[int, float]], target: float) -> int | None:
    return next((spent for spent, best in points if best >= target - 1e-12), None)


def best_at(points: list[tuple[int, float]], budget: int) -> float:
    values = [best for spent, best in points if spent <= budget]
    return values[-1] if values else -np.inf


def rescore(config: dict, folds: int, fold_seed: int, epochs: int) -> list[float]:
    """``config`` trained and scored as a trial with ``folds`` folds of seed ``fold_seed``."""
    from trainables.trainable import Trial
    from trainables.trial_data import prepare_from_config

    config = {**config, "folds": folds, "seed": fold_seed, "epochs": epochs}
    trial = Trial(str(config["method"]), config, prepare_from_config(config))
    while trial.epoch < trial.epochs:
        result = trial.step()
    return [result[f"fold{k}_{METRIC}"] for k in range(folds)]


def fmt_spent(spent: int | None, cap: int) -> str:
    return f"{spent:,}" if spent is not None else f"not in {cap:,}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 5 epochs, 2 folds, 24 grid points, 8 trials, 1 seed")
    ap.add_argument("--storage", default=None, help="searches folder (default: a new temporary folder); "
                                                    "finished searches in it are reused")
    ap.add_argument("--seeds", type=int, default=3, help="sampler seeds per strategy (not the grid)")
    ap.add_argument("--max-concurrent", type=int, default=2)
    args = ap.parse_args()
    epochs, folds, trials, grid_trials, seeds = (5, 2, 8, 24, 1) if args.quick else (20, 3, 40, 729, args.seeds)
    storage = Path(args.storage or tempfile.mkdtemp(prefix="fusetune-efficiency-")).resolve()
    print(f"machine: {machine()}\nsearches in {storage}\n")
    t0 = time.monotonic()
    common = {"space": SPACE, "data": "breast-tcga", "epochs": epochs, "folds": folds, "seed": 0, "top_k": 0,
              "max_concurrent": args.max_concurrent}
    runs: dict[str, list[StudyResults]] = {}
    for s in STRATEGIES:
        for seed in ([0] if s.trials is None else range(seeds)):
            name = f"{s.sampler}-{s.scheduler}-{seed}{'-quick' if args.quick else ''}"
            runs.setdefault(s.label, []).append(run_search(storage, name, {
                **common, "sampler": s.sampler, "scheduler": s.scheduler, "sampler_seed": seed,
                "num_samples": grid_trials if s.trials is None else trials}))
    wall = time.monotonic() - t0

    grid = runs[STRATEGIES[0].label][0]
    grid_curve = curve(grid)
    grid_best, grid_cost = grid_curve[-1][1], grid_curve[-1][0]
    budgets = [b for b in (epochs * 10, epochs * 20, epochs * 40) if b <= grid_cost]
    print(f"\nomnifuse-paper on breast-tcga, {folds}-fold CV (fold seed 0), {epochs} epochs per trial; "
          f"macro F1 (%) of the best configuration that trained all epochs; mean ± std over sampler seeds.")
    print(f"grid: {len(grid.trials)} points, best {100 * grid_best:.2f} after all {grid_cost:,} trial-epochs.\n")
    head = ["strategy", "trials", "trial-epochs spent", *(f"best at {b:,} t-e" for b in budgets), "best at the end",
            "t-e to reach grid's best", "t-e to within 1 point of it"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for label, studies in runs.items():
        curves = [curve(st) for st in studies]
        spent = [c[-1][0] for c in curves]
        reach = [spent_to_reach(c, grid_best) for c in curves]
        near = [spent_to_reach(c, grid_best - 0.01) for c in curves]
        cells = [label, f"{np.mean([len(st.trials) for st in studies]):.0f}", f"{np.mean(spent):,.0f}",
                 *(pm([best_at(c, b) for c in curves]) for b in budgets), pm([c[-1][1] for c in curves]),
                 ", ".join(fmt_spent(r, s) for r, s in zip(reach, spent)),
                 ", ".join(fmt_spent(r, s) for r, s in zip(near, spent))]
        print("| " + " | ".join(cells) + " |", flush=True)

    rescore_folds, rescore_seed = (2, 1) if args.quick else (5, 1)
    print(f"\nChampions re-scored on fresh folds ({rescore_folds}-fold, fold seed {rescore_seed}, same {epochs} epochs): "
          "macro F1 (%) mean ± std over folds, per sampler seed.\n")
    print("| strategy | search's own CV estimate | re-scored on fresh folds | champion (K, alpha, beta, lambda1..3) |\n"
          "|---|---|---|---|")
    default = get_space(SPACE).default_point()
    paper = next(t for t in grid.trials if all(t.config.get(k) == v for k, v in default.items()))
    for label, i, trial in [("paper default (the grid's first point)", None, paper),
                            *((label, i, st.best(METRIC, "max")) for label, studies in runs.items()
                              for i, st in enumerate(studies))]:
        c = trial.config
        fresh = rescore(c, rescore_folds, rescore_seed, epochs)
        params = ", ".join(f"{c[k]:.3g}" for k in ("K", "alpha", "beta", "lambda1", "lambda2", "lambda3"))
        name = label if i is None else f"{label} (seed {i})"
        print(f"| {name} | {100 * trial.value(METRIC):.1f} | {pm(fresh)} | {params} |", flush=True)
    total = {label: sum(len(t.history) for st in studies for t in st.trials) for label, studies in runs.items()}
    print("\ntrial-epochs per strategy (all seeds): " + ", ".join(f"{k} {v:,}" for k, v in total.items()))
    print(f"searches ran for {wall / 60:.1f} min on this machine (reused finished ones take 0)")


if __name__ == "__main__":
    main()
