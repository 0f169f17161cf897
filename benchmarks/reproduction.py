"""Reproduction on real data without confounds (issue 16): CLIMD in both difficulty orders and with
warm-up, OmniFuse and concatenation with and without the same modality dropout, and for each space
a learning-rate-only search beside the full search; every row confirmed on fresh folds next to the
reference models, on breast-tcga and a class-imbalanced ROSMAP.

Every row is read back from a real ``python -m search.run`` on the same folds (``--seed 0``:
stratified k-fold CV of the training part). Per space and dataset, three searches:

* **variants**: one FIFO search whose trials are the space's paper default and the variants of
  :data:`VARIANTS` (``--points``, each the paper default with the named keys changed), every one
  trained for the whole budget and every one confirmed (``--top-k`` = the number of trials);
* **lr only**: ``--only lr``, a TPE + ASHA search of the learning rate alone, every other
  dimension at the space's default (what a careful user of the paper's method would tune);
* **full**: TPE + ASHA over the whole space, paper default first.

ASHA uses the space's default grace (``--grace-period`` unset): a quarter of the budget, and for
``climd`` the whole budget (its TSS curriculum trains on every sample only at the last epoch, so
no CLIMD trial is stopped before it has seen the whole training set). Every search ends with the
confirmation stage (``--confirm-repeats``: the candidates and the references ``logreg`` and ``rf``
retrained on fresh repetitions of the k-fold scheme that no search used); a row's *confirmed*
figure is its mean over those fresh fold scores, so rows of different searches are compared like
with like and a search's selection optimism is not in it. The *search* figure is the trial's CV
estimate on the search's own folds (a maximum over trials for lr-only and full: optimistic).
*test*: the row's configuration trained once on the whole training part (seed 0) and evaluated
once on the test part (breast-tcga: 70 samples, protein missing for all; ROSMAP: its own 1:5 part).

A variant whose keys are not dimensions of the space (e.g. ``warmup_epochs`` before issue 16's
CLIMD dimensions were merged) is listed as not available, with the reason.

Data: ``breast-tcga`` (Basal/Her2/LumA 45/30/75 train) and ``rosmap:ratio=5`` (AD subsampled,
seeded, to 1:5 of NC in each part: train NC/AD 118/24, test 51/10). ``--quick``: breast-tcga only.

    FUSETUNE_DATA_DIR=../shared/data python benchmarks/reproduction.py --storage DIR            # full
    FUSETUNE_DATA_DIR=../shared/data python benchmarks/reproduction.py --storage DIR --quick    # minutes
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from searches import machine, run_search

from search.select.results import StudyResults, TrialResult
from spaces import get_space

DATASETS = ("breast-tcga", "rosmap:ratio=5")
CURRICULUM = "curriculum"
"""The trial-config key of CLIMD's curriculum."""
OBJECTIVE = "macro_f1"
METRICS = (("macro_f1", "macro F1"), ("accuracy", "accuracy"), ("auroc", "AUROC"))


@dataclass(frozen=True)
class Budget:
    epochs: int
    folds: int
    full_trials: int
    lr_trials: int
    confirm_repeats: int
    warmup: int
    """CLIMD warm-up epochs of the warm-up variants (every sample, before the curriculum starts)"""
    datasets: tuple[str, ...]


FULL = Budget(epochs=100, folds=5, full_trials=40, lr_trials=16, confirm_repeats=3, warmup=10, datasets=DATASETS)
SHORT = Budget(epochs=100, folds=5, full_trials=10, lr_trials=5, confirm_repeats=2, warmup=10, datasets=DATASETS)
"""The papers' epochs (T = 100) with a quarter of FULL's trials: what fits a session on 2 cores."""
QUICK = Budget(epochs=6, folds=3, full_trials=4, lr_trials=3, confirm_repeats=1, warmup=2, datasets=DATASETS[:1])


OMNIFUSE_LR = get_space("omnifuse").default_config()["lr"]
"""The concatenation baseline is also run at OmniFuse's default learning rate, so that the two
models' modality-dropout comparison is made at one learning rate."""


def variants(b: Budget) -> dict[str, list[tuple[str, dict]]]:
    """Per space: (label, keys changed from the paper default); the first is the paper default."""
    return {
        "baseline": [("paper default (no modality dropout)", {}),
                     ("modality dropout 1.0 (OmniFuse's random subsets)", {"modality_dropout": 1.0}),
                     (f"at OmniFuse's default lr {OMNIFUSE_LR:g}, no modality dropout", {"lr": OMNIFUSE_LR}),
                     (f"at OmniFuse's default lr {OMNIFUSE_LR:g}, modality dropout 1.0",
                      {"lr": OMNIFUSE_LR, "modality_dropout": 1.0})],
        "climd": [("desc (paper default), no warm-up", {}),
                  ("asc, no warm-up", {"difficulty_order": "asc"}),
                  (f"desc, {b.warmup} warm-up epochs", {"warmup_epochs": b.warmup}),
                  (f"asc, {b.warmup} warm-up epochs", {"difficulty_order": "asc", "warmup_epochs": b.warmup})],
        "omnifuse": [("paper default (modality dropout 1.0)", {}),
                     ("no modality dropout", {"modality_dropout": 0.0})],
    }


LABELS = {"baseline": "baseline (concatenation)", "climd": "baseline + CLIMD", "omnifuse": "OmniFuse"}
SHOWN = {"baseline": ("lr", "imbalance", "modality_dropout", "hidden", "dropout"),
         "climd": ("lr", CURRICULUM, "gamma", "measurer", "difficulty_order", "warmup_epochs", "competence_epochs"),
         "omnifuse": ("lr", "modality_dropout", "K", "beta", "lambda2", "lambda3")}


def slug(data: str) -> str:
    return data.replace(":", "-").replace("=", "").replace(",", "-")


def valid_points(space_name: str, changes: list[tuple[str, dict]]) -> tuple[list[tuple[str, dict]], list[tuple[str, str]]]:
    """The variants as whole points of the space (paper default + changes), and those it cannot
    express with the reason."""
    space = get_space(space_name)
    ok, missing = [], []
    for label, change in changes:
        point = {**space.default_point(), **change}
        unknown = [k for k in change if k not in space.names]
        problems = space.validate(point)
        if unknown or problems:
            reason = f"{unknown[0]!r} is not a dimension of space {space_name}" if unknown else problems[0]
            missing.append((label, reason))
        else:
            ok.append((label, point))
    return ok, missing


KINDS = ("variants", "lr", "full")


def run_all(storage: Path, b: Budget, data: str, space: str, *, max_concurrent: int, quick: bool,
            kinds: tuple[str, ...] = KINDS) -> dict:
    """The searches ``kinds`` of ``space`` on ``data`` (each run unless already done)."""
    common = {"space": space, "data": data, "epochs": b.epochs, "folds": b.folds, "seed": 0,
              "max_concurrent": max_concurrent, "confirm_repeats": b.confirm_repeats, "references": "logreg,rf"}
    suffix = "-quick" if quick else ""
    ok, missing = valid_points(space, variants(b)[space])
    extra = [p for _, p in ok[1:]]
    options = {
        "variants": {**common, "num_samples": 1 + len(extra), "sampler": "tpe", "scheduler": "fifo",
                     "top_k": 1 + len(extra), **({"points": extra} if extra else {})},
        "lr": {**common, "only": "lr", "num_samples": b.lr_trials, "sampler": "tpe", "scheduler": "asha", "top_k": 0},
        "full": {**common, "num_samples": b.full_trials, "sampler": "tpe", "scheduler": "asha", "top_k": 0},
    }
    runs = {k: run_search(storage, f"{space}-{slug(data)}-{k}{suffix}", options[k]) for k in kinds}
    return {"runs": runs, "variants": ok, "missing": missing}


def confirmation(study: StudyResults) -> list[dict]:
    path = study.folder / "confirmation.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; the search ran without its confirmation stage")
    return list(csv.DictReader(path.open()))


def confirmed(row: dict) -> list[str]:
    out = []
    for m, _ in METRICS:
        v = row.get(f"confirmed_{m}", "")
        if v == "":
            out.append("-")
        elif m == OBJECTIVE:
            out.append(f"{100 * float(v):.1f} ± {100 * float(row[f'confirmed_{m}_std']):.1f}")
        else:
            out.append(f"{float(v):.3f}" if m == "auroc" else f"{100 * float(v):.1f}")
    return out


def test_metrics(config: dict) -> dict[str, float]:
    """``config`` trained once on the whole training part, evaluated once on the test part (the
    refit that registers a search's top-k models, ``search.handoff.refit.refit``)."""
    from search.handoff.refit import refit

    return refit(config, device="cpu").test_metrics


def describe(config: dict, space: str) -> str:
    out = []
    for k in SHOWN[space]:
        if k in config:
            v = config[k]
            out.append(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}")
    return ", ".join(out)


def matches(config: dict, point: dict) -> bool:
    return all(config.get(k) == v for k, v in point.items())


def rows_of(space: str, result: dict) -> list[tuple[str, dict, TrialResult, StudyResults]]:
    """(row label, confirmation row, trial, study) for the variants, the lr-only and the full search."""
    out = []
    study = result["runs"]["variants"]
    conf = confirmation(study)
    for label, point in result["variants"]:
        trial = next(t for t in study.trials if matches(t.config, point))
        row = next(r for r in conf if r["kind"] == "model" and r["trial_id"] == trial.trial_id)
        out.append((label, row, trial, study))
    for kind, label in (("lr", "lr-only search, champion"), ("full", "full search, champion")):
        if kind not in result["runs"]:
            continue
        study = result["runs"][kind]
        row = next(r for r in confirmation(study) if r["kind"] == "model")
        out.append((f"{label} ({len(study.trials)} trials, {len(study.finished())} finished)", row,
                    study.trial(row["trial_id"]), study))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: breast-tcga, 6 epochs, 3 folds, 4 + 3 trials, "
                                                         "1 confirmation repeat")
    ap.add_argument("--budget", choices=("full", "short"), default="full",
                    help="full: 40 + 16 trials, 3 confirmation repeats; short: 10 + 5 trials, 2 repeats (both 100 epochs)")
    ap.add_argument("--datasets", default=None, help=f"comma-separated subset of {','.join(DATASETS)}")
    ap.add_argument("--storage", default=None, help="searches folder (default: a new temporary folder); "
                                                    "finished searches in it are reused")
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--no-test", action="store_true", help="skip the test-part column (no refits)")
    args = ap.parse_args()
    b = QUICK if args.quick else {"full": FULL, "short": SHORT}[args.budget]
    if args.datasets:
        unknown = set(args.datasets.split(",")) - set(DATASETS)
        if unknown:
            ap.error(f"--datasets: {', '.join(sorted(unknown))} not among {', '.join(DATASETS)}")
        b = replace(b, datasets=tuple(args.datasets.split(",")))
    storage = Path(args.storage or tempfile.mkdtemp(prefix="fusetune-reproduction-")).resolve()
    print(f"machine: {machine()}\nsearches in {storage}\nbudget: {b}\n", flush=True)
    t0 = time.monotonic()
    results = {(d, s): run_all(storage, b, d, s, max_concurrent=args.max_concurrent, quick=args.quick)
               for d in b.datasets for s in LABELS}
    wall = time.monotonic() - t0

    for data in b.datasets:
        print(f"\n### {data} ({b.folds}-fold CV of the training part, fold seed 0; confirmed = mean ± std over "
              f"{b.confirm_repeats} x {b.folds} fresh fold scores; % except AUROC)\n")
        head = ["model", "row", f"search {OBJECTIVE}", *(f"confirmed {label}" for _, label in METRICS),
                "test macro F1", "configuration"]
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        refs: dict[str, list[str]] = {}
        for space, label in LABELS.items():
            result = results[(data, space)]
            for row_label, row, trial, study in rows_of(space, result):
                search, config = row.get(f"search_{OBJECTIVE}", ""), trial.config
                test = "-" if args.no_test else f"{100 * test_metrics(config)['macro_f1']:.1f}"
                search = f"{100 * float(search):.1f}" if search else "- (stopped early)"
                print(f"| {label} | {row_label} | {search} | {' | '.join(confirmed(row))} | {test} "
                      f"| {describe(config, space)} |", flush=True)
                for r in confirmation(study):
                    if r["kind"] == "reference":
                        refs.setdefault(r["candidate"].split(":")[-1], confirmed(r))
            for row_label, reason in result["missing"]:
                print(f"| {label} | {row_label} | not available: {reason} | | | | | |")
        for name, figures in refs.items():
            print(f"| reference {name} | on the same fresh folds | - | {' | '.join(figures)} | - | - |")
    print(f"\nsearches ran for {wall / 60:.1f} min on this machine (reused finished ones take 0)")


if __name__ == "__main__":
    main()
