"""Robustness to missing modalities (as in the OmniFuse paper's Fig. 6): the tuned champions of
OmniFuse and of the concatenation baseline, macro F1 as modalities go missing at test time.

The champions are those of ``benchmarks/reproduction.py`` (40-trial TPE + ASHA searches, 5-fold
CV, fold seed 0); with the same ``--storage`` their searches are reused, otherwise they are run.
Each champion's fold models (from the trial's final checkpoint) are evaluated on their own
validation folds with ``search.robustness``'s seeded protocol: for one modality, that fraction of
the validation samples lose it (only samples that keep another modality); for ``all``, that
fraction of all (sample, modality) cells are dropped, never a sample's last one (with 3 modalities
at most 2/3 of the cells can go, so the achieved rate is printed). Models never saw missing
inputs in training (both training parts are complete), as in the paper's test-time protocol.
Rate 0 reproduces the fold metrics the search reported (checked).

    FUSETUNE_DATA_DIR=../shared/data python benchmarks/robustness.py --storage DIR   # DIR of reproduction.py: ~1 min
    FUSETUNE_DATA_DIR=../shared/data python benchmarks/robustness.py --quick         # ~3 min
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from reproduction import DATASETS, searches
from searches import machine

from search.robustness import ALL, evaluate, fold_models, reproduces_search

METRIC = "macro_f1"
RATES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
MODELS = (("omnifuse", "OmniFuse"), ("baseline", "concatenation"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: the quick searches of reproduction.py")
    ap.add_argument("--storage", default=None, help="searches folder of reproduction.py (default: a new temporary folder)")
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="seed of the masking")
    args = ap.parse_args()
    storage = Path(args.storage or tempfile.mkdtemp(prefix="fusetune-reproduction-")).resolve()
    print(f"machine: {machine()}\nsearches in {storage}\n")
    for data in DATASETS:
        results = {}
        for space, label in MODELS:
            study = searches(storage, data, space, quick=args.quick, max_concurrent=args.max_concurrent)["tuned"]
            models = fold_models(study.best(METRIC, "max"))
            targets = [*models.modalities, ALL]
            # "all" cannot go past (M-1)/M; rates above it give the same cells as the largest achievable
            rows = evaluate(models, METRIC, RATES, seed=args.seed, targets=targets)
            ok = reproduces_search(models, METRIC, rows)
            results[label] = {(r.target, r.rate): r for r in rows}
            print(f"{data}: {label} champion {study.best(METRIC, 'max').trial_id} ({models.source.split(' ')[0]}); "
                  f"rate 0 reproduces the search's fold values: {ok}")
        labels = [label for _, label in MODELS]
        targets = list(dict.fromkeys(t for t, _ in results[labels[0]]))
        print(f"\n### {data}: CV macro F1 (%) of the tuned champions as modalities go missing in the validation folds "
              f"(mean ± std over folds)\n")
        print("| missing | rate (achieved) | " + " | ".join(labels) + " | OmniFuse - concatenation |\n|---|---|"
              + "---|" * (len(labels) + 1))
        for target in targets:
            for rate in RATES:
                rows = [results[label].get((target, rate)) for label in labels]
                if any(r is None for r in rows):
                    continue
                diff = rows[0].mean - rows[1].mean
                cells = [f"{100 * r.mean:.1f} ± {100 * r.std:.1f}" for r in rows]
                print(f"| {target} | {rate:g} ({rows[0].achieved:.2f}) | {' | '.join(cells)} | {100 * diff:+.1f} |")
        drop = {label: np.mean([results[label][(t, 0.0)].mean - results[label][(t, max(RATES))].mean
                                for t in targets if t != ALL]) for label in labels}
        print("\nmean drop from rate 0 to 1 over single modalities: "
              + ", ".join(f"{k} {100 * v:.1f} points" for k, v in drop.items()) + "\n", flush=True)


if __name__ == "__main__":
    main()
