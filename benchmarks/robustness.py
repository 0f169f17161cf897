"""Robustness to missing modalities (as in the OmniFuse paper's Fig. 6), run both ways: OmniFuse and
the concatenation baseline with and without the same training-time modality dropout, and their
tuned champions; macro F1 as modalities go missing at test time.

The models are trials of ``benchmarks/reproduction.py``'s searches (5-fold CV, fold seed 0): the
variants search's paper default and modality-dropout variant of each space, and the full search's
confirmed champion; with the same ``--storage`` they are reused, otherwise they are run. What a
model saw in training is its configuration's: ``modality_dropout`` p replaces, with probability p,
a training sample's modalities by a uniformly drawn non-empty subset of its available ones.
OmniFuse's paper scheme (and default) is p = 1, every sample every epoch (about 43% of the
modality slots dropped with 3 modalities); the concatenation baseline's default is p = 0, complete
training inputs. So the paper's comparison (OmniFuse p = 1 vs concatenation p = 0) mixes the model
with its training-time dropout; the p = 0 / p = 1 rows separate the two.

Each model's fold models (from the trial's final checkpoint, else retrained from its config) are
evaluated on their own validation folds with ``search.robustness``'s seeded protocol: for one
modality, that fraction of the validation samples lose it (only samples that keep another
modality); for ``all``, that fraction of all (sample, modality) cells are dropped, never a
sample's last one (with 3 modalities at most 2/3 of the cells can go, so the achieved rate is
printed). Rate 0 reproduces the fold metrics the search reported (checked).

    FUSETUNE_DATA_DIR=../shared/data python benchmarks/robustness.py --storage DIR   # DIR of reproduction.py
    FUSETUNE_DATA_DIR=../shared/data python benchmarks/robustness.py --quick --storage DIR   # variants only
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from reproduction import FULL, QUICK, rows_of, run_all
from searches import machine

from search.robustness import ALL, evaluate, fold_models, reproduces_search

METRIC = "macro_f1"
RATES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
SPACES = ("omnifuse", "baseline")
SHORT = {"omnifuse": "OmniFuse", "baseline": "concatenation"}


def models(storage: Path, data: str, *, quick: bool, max_concurrent: int) -> list[tuple[str, object]]:
    """(column label, trial): per space its variants (paper default, modality dropout changed) and its
    full search's champion (``--quick``: the variants only); variants a space cannot express are left
    out (reproduction.py says why)."""
    b = QUICK if quick else FULL
    out = []
    for space in SPACES:
        result = run_all(storage, b, data, space, max_concurrent=max_concurrent, quick=quick,
                         kinds=("variants",) if quick else ("variants", "full"))
        for label, _, trial, _ in rows_of(space, result):
            p = trial.config.get("modality_dropout")
            name = "tuned" if label.startswith("full") else label.split(" (")[0]
            out.append((f"{SHORT[space]}, {name}" + ("" if p is None else f", p = {p:g}"), trial))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: the quick searches of reproduction.py")
    ap.add_argument("--storage", default=None, help="searches folder of reproduction.py (default: a new temporary folder)")
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="seed of the masking")
    args = ap.parse_args()
    storage = Path(args.storage or tempfile.mkdtemp(prefix="fusetune-reproduction-")).resolve()
    print(f"machine: {machine()}\nsearches in {storage}\n")
    datasets = (QUICK if args.quick else FULL).datasets
    for data in datasets:
        results, labels = {}, []
        for label, trial in models(storage, data, quick=args.quick, max_concurrent=args.max_concurrent):
            fm = fold_models(trial)
            targets = [*fm.modalities, ALL]
            rows = evaluate(fm, METRIC, RATES, seed=args.seed, targets=targets)
            results[label] = {(r.target, r.rate): r for r in rows}
            labels.append(label)
            print(f"{data}: {label} = trial {trial.trial_id} ({fm.source.split(' ')[0]}); rate 0 reproduces the "
                  f"search's fold values: {reproduces_search(fm, METRIC, rows)}")
        targets = list(dict.fromkeys(t for t, _ in results[labels[0]]))
        print(f"\n### {data}: CV macro F1 (%) as modalities go missing in the validation folds (mean ± std over folds)\n")
        print("| missing | rate (achieved) | " + " | ".join(labels) + " |\n|---|---|" + "---|" * len(labels))
        for target in targets:
            for rate in RATES:
                rows = [results[label].get((target, rate)) for label in labels]
                if any(r is None for r in rows):
                    continue
                cells = [f"{100 * r.mean:.1f} ± {100 * r.std:.1f}" for r in rows]
                print(f"| {target} | {rate:g} ({rows[0].achieved:.2f}) | {' | '.join(cells)} |")
        drop = {label: np.mean([results[label][(t, 0.0)].mean - results[label][(t, max(RATES))].mean
                                for t in targets if t != ALL]) for label in labels}
        print("\nmean drop from rate 0 to 1 over single modalities: "
              + ", ".join(f"{k} {100 * v:.1f} points" for k, v in drop.items()) + "\n", flush=True)


if __name__ == "__main__":
    main()
