"""Reproduction on real data: baseline, baseline + CLIMD and OmniFuse at the papers' settings, and
each tuned by a 40-trial TPE + ASHA search, on breast-tcga and a class-imbalanced ROSMAP.

Every row is a real ``python -m search.run`` on the same folds (``--seed 0``: stratified 5-fold
CV of the training part) and read back from its results folder:

* paper settings: a 1-trial search of the space (``--num-samples 1 --scheduler fifo``), whose
  one trial is the space's paper default (CLIMD: lr 5e-5, T = 100, gamma 0.3; OmniFuse: K = 5,
  alpha 0.1, beta 0.5, lambda1..3 = 1, 10, 0.5 at the same lr and T; baseline: early fusion with
  plain cross-entropy at the same lr and T);
* tuned: ``--space baseline|climd|omnifuse --sampler tpe --scheduler asha --num-samples 40``
  (paper default first, 100 epochs, ASHA grace 25 epochs, reduction factor 3), macro F1 as the
  objective; the row is its champion (the best trial that trained all 100 epochs).

Figures are the trial's final fold metrics, mean ± std (population) over the 5 folds. A tuned
row's CV figure is the maximum over 40 trials measured on these same folds, so it is optimistic;
the held-out test part is the unbiased check: each row's configuration is trained once on the
whole training part (seed 0) and evaluated once on the test part (breast-tcga: 70 samples, protein
missing for every one; ROSMAP variant: its own 1:5 test part).

Data: ``breast-tcga`` (Basal/Her2/LumA 45/30/75 train) and ``rosmap:ratio=5`` (AD subsampled,
seeded, to 1:5 of NC in each part: train NC/AD 118/24, test 51/10).

    FUSETUNE_DATA_DIR=../shared/data python benchmarks/reproduction.py            # ~36 min on 2 cores
    FUSETUNE_DATA_DIR=../shared/data python benchmarks/reproduction.py --quick    # ~4 min
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from searches import machine, pm, run_search

from search.results import StudyResults

DATASETS = ("breast-tcga", "rosmap:ratio=5")
SPACES = (("baseline", "baseline (concatenation)"), ("climd", "baseline + CLIMD"), ("omnifuse", "OmniFuse"))
METRICS = (("accuracy", "accuracy"), ("weighted_f1", "weighted F1"), ("macro_f1", "macro F1"), ("auroc", "AUROC"))
OBJECTIVE = "macro_f1"


def slug(data: str) -> str:
    return data.replace(":", "-").replace("=", "").replace(",", "-")


def searches(storage: Path, data: str, space: str, *, quick: bool, max_concurrent: int) -> dict[str, StudyResults]:
    """The paper-setting and the tuned search of ``space`` on ``data`` (run unless already done)."""
    epochs, folds, trials = (6, 3, 6) if quick else (100, 5, 40)
    common = {"space": space, "data": data, "epochs": epochs, "folds": folds, "seed": 0, "top_k": 0,
              "max_concurrent": max_concurrent}
    suffix = "-quick" if quick else ""
    return {
        "paper": run_search(storage, f"{space}-{slug(data)}-paper{suffix}",
                            {**common, "num_samples": 1, "sampler": "tpe", "scheduler": "fifo"}),
        "tuned": run_search(storage, f"{space}-{slug(data)}-tuned{suffix}",
                            {**common, "num_samples": trials, "sampler": "tpe", "scheduler": "asha"}),
    }


def test_metrics(config: dict) -> dict[str, float]:
    """``config`` trained once on the whole training part, evaluated once on the test part: the
    refit that registers a search's top-k models (``search.models.refit``)."""
    from search.models import refit

    return refit(config, device="cpu").test_metrics


def describe(config: dict, space: str) -> str:
    """The tuned values that matter most, for the table."""
    keys = {"baseline": ("lr", "imbalance", "hidden", "dropout"),
            "climd": ("lr", "scheduler", "gamma", "measurer", "difficulty_order"),
            "omnifuse": ("lr", "K", "beta", "lambda2", "lambda3")}[space]
    out = []
    for k in keys:
        if k in config:
            v = config[k]
            out.append(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}")
    return ", ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 epochs, 3 folds, 6 trials")
    ap.add_argument("--storage", default=None, help="searches folder (default: a new temporary folder); "
                                                    "finished searches in it are reused")
    ap.add_argument("--max-concurrent", type=int, default=2)
    args = ap.parse_args()
    storage = Path(args.storage or tempfile.mkdtemp(prefix="fusetune-reproduction-")).resolve()
    print(f"machine: {machine()}\nsearches in {storage}\n")
    t0 = time.monotonic()
    runs = {(d, s): searches(storage, d, s, quick=args.quick, max_concurrent=args.max_concurrent)
            for d in DATASETS for s, _ in SPACES}
    wall = time.monotonic() - t0

    for data in DATASETS:
        some = runs[(data, SPACES[0][0])]["paper"]
        n_folds = some.folds
        print(f"\n### {data} ({n_folds}-fold CV of the training part, fold seed 0; % mean ± std over folds; "
              f"test = trained on the whole training part, evaluated once)\n")
        head = ["model", *(f"CV {label}" for _, label in METRICS), "test accuracy", "test macro F1", "test AUROC",
                "trials (finished all epochs)", "configuration"]
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for space, label in SPACES:
            for kind in ("paper", "tuned"):
                study = runs[(data, space)][kind]
                best = study.best(OBJECTIVE, "max")
                cv = [pm(best.fold_values(m)) if m != "auroc" else pm(best.fold_values(m), 1, 3) for m, _ in METRICS]
                test = test_metrics(best.config)
                name = f"{label}, paper settings" if kind == "paper" else f"{label}, tuned (TPE + ASHA)"
                print(f"| {name} | {' | '.join(cv)} | {100 * test['accuracy']:.1f} | {100 * test['macro_f1']:.1f} "
                      f"| {test['auroc']:.3f} | {len(study.trials)} ({len(study.finished())}) "
                      f"| {describe(best.config, space)} |", flush=True)
    print(f"\nsearches ran for {wall / 60:.1f} min on this machine (reused finished ones take 0)")


if __name__ == "__main__":
    main()
