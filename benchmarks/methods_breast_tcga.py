"""5-fold CV on breast-tcga (train split) for the CLIMD / OmniFuse methods at paper defaults, untuned.

Rows: baseline (early fusion, CE), baseline + CLIMD, OmniFuse (all switches), OmniFuse without
DWFuse, weighted CE, focal loss. Prints a Markdown table of macro F1 and accuracy (mean ± std over
the folds) plus the mean first -> last epoch training loss; then trains OmniFuse on the whole
train split and predicts the test split, where protein is missing for every sample.

    FUSETUNE_DATA_DIR=../shared/data python benchmarks/methods_breast_tcga.py            # paper lr/T
    FUSETUNE_DATA_DIR=../shared/data python benchmarks/methods_breast_tcga.py --lr 1e-3  # a second run
    FUSETUNE_DATA_DIR=../shared/data python benchmarks/methods_breast_tcga.py --quick    # smoke run

Defaults are the papers': lr 5e-5 and T = 100 epochs (CLIMD; OmniFuse gives neither, so it uses
the same), gamma = 0.3, K = 5, alpha = 0.1, beta = 0.5, lambda1..3 = 1, 10, 0.5, focal gamma 2
(Lin et al.). Width 128, batch 32, AdamW weight decay 1e-4 are the engine's defaults.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from trainables.data import load_dataset, stratified_kfold
from trainables.engine import FoldTrainer

METHODS: list[tuple[str, str, dict]] = [
    ("baseline", "baseline", {}),
    ("baseline + CLIMD", "baseline", {"scheduler": "climd"}),
    ("OmniFuse (all switches)", "omnifuse", {}),
    ("OmniFuse w/o DWFuse", "omnifuse", {"dwfuse": False}),
    ("weighted CE", "baseline", {"imbalance": "weighted_ce"}),
    ("focal loss", "baseline", {"imbalance": "focal"}),
]


def train(method: str, config: dict, train_part, val_part, seed: int) -> tuple[FoldTrainer, list[float]]:
    ft = FoldTrainer(method, config, train_part, val_part, seed=seed)
    losses = [ft.train_epoch()["loss"] for _ in range(ft.epochs)]
    return ft, losses


def pm(values: list[float]) -> str:
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=100, help="T (paper: 100)")
    ap.add_argument("--lr", type=float, default=5e-5, help="learning rate (paper: 5e-5)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="fixes folds, initialisation and sampling")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these small MLPs)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 folds, 5 epochs")
    args = ap.parse_args()
    if args.quick:
        args.folds, args.epochs = 2, 5
    torch.set_num_threads(args.threads)

    data = load_dataset("breast-tcga")
    train_split, test_split = data.split_part("train"), data.split_part("test")
    counts = train_split.class_counts()
    folds = stratified_kfold(train_split.labels, args.folds, args.seed)
    common = {"epochs": args.epochs, "lr": args.lr}
    print(f"breast-tcga train: {len(train_split)} samples, classes {dict(zip(train_split.class_names, counts.tolist()))}; "
          f"{args.folds}-fold CV, seed {args.seed}, epochs {args.epochs}, lr {args.lr:g}")
    print(f"majority-class predictor: accuracy {counts.max() / counts.sum():.3f}, "
          f"macro F1 {2 * counts.max() / (counts.max() + counts.sum()) / len(counts):.3f}\n")
    print("| method | macro F1 (%) | accuracy (%) | weighted F1 (%) | train loss epoch 1 -> T | s / fold |")
    print("|---|---|---|---|---|---|")
    for label, method, extra in METHODS:
        scores: dict[str, list[float]] = {"macro_f1": [], "accuracy": [], "weighted_f1": []}
        first, last, secs = [], [], []
        for k, (tr, va) in enumerate(folds):
            t0 = time.perf_counter()
            ft, losses = train(method, {**common, **extra}, train_split.take(tr), train_split.take(va), args.seed + k)
            secs.append(time.perf_counter() - t0)
            metrics = ft.evaluate()
            for key in scores:
                scores[key].append(metrics[key])
            first.append(losses[0])
            last.append(losses[-1])
        print(f"| {label} | {pm(scores['macro_f1'])} | {pm(scores['accuracy'])} | {pm(scores['weighted_f1'])} "
              f"| {np.mean(first):.3f} -> {np.mean(last):.3f} | {np.mean(secs):.1f} |", flush=True)

    ft, losses = train("omnifuse", common, train_split, None, args.seed)
    m = ft.evaluate(test_split)
    print(f"\nOmniFuse (all switches) trained on the whole train split, test split (70 samples, protein missing "
          f"for all {int((~test_split.modalities['protein'].mask).sum())}): macro F1 {100 * m['macro_f1']:.1f}, "
          f"accuracy {100 * m['accuracy']:.1f}, weighted F1 {100 * m['weighted_f1']:.1f}, AUROC {m['auroc']:.3f}")


if __name__ == "__main__":
    main()
