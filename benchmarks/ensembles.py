"""Is the handed-off model better than what a user gets without us? Nested estimates of the single
confirmed champion, the ensembles and the reference models.

For each space (``baseline``, ``omnifuse``) and data set (breast-tcga, rosmap, ``rosmap:ratio=5``),
two ``python -m search.nested`` runs on the same 5 outer folds (seed 0), one with ``--ensemble
trials`` and one with ``--ensemble trials+references``; every outer search is a complete
``search.run`` (its trials, its confirmation stage on fresh folds, its ensemble selection and
confirmation, its refit) on the outer training part, and each of its registered models is scored
once on the held-out outer fold. Per run, the rows (mean ± std over outer folds, in percent):

- **single champion**: the best confirmed single model (a trial or the paper default);
- **ensemble (trials)** / **ensemble (trials + references)**: the ensemble of that run;
- **handed off**: what the run registered as ``champion`` (the ensemble only where it won on the
  fresh folds); its p-value against every other row is the corrected resampled t-test over
  outer folds;
- **reference:logreg / rf / hgb**: trained on the same outer training parts, scored on the same
  outer test folds.

The two runs share their outer folds, data, seeds and trial budget, so their single champions are
the same models: the single-champion and reference rows are printed once, from the
``trials+references`` run. The target: the handed-off model at least 1 point of macro F1 above the
best reference on two of the three data sets, and never below it by more than the outer folds'
standard error; the verdict lines say where it is met and where not.

    FUSETUNE_DATA_DIR=../shared/data python benchmarks/ensembles.py --storage DIR         # 20 x 100, hours
    FUSETUNE_DATA_DIR=../shared/data python benchmarks/ensembles.py --quick               # minutes
    python benchmarks/ensembles.py --storage DIR --num-samples 8 --epochs 100 --spaces baseline   # a reduced budget

Finished nested runs are read back from ``--storage`` (run it again to continue).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from searches import REPO, machine

DATASETS = ("breast-tcga", "rosmap", "rosmap:ratio=5")
SPACES = ("baseline", "omnifuse")
VARIANTS = ("trials", "trials+references")
METRIC = "macro_f1"


def budget(args: argparse.Namespace) -> dict[str, object]:
    if args.quick:
        b = {"outer_folds": 3, "num_samples": 3, "epochs": 5, "folds": 3, "confirm_repeats": 1, "top_k": 1}
    else:
        b = {"outer_folds": 5, "num_samples": 20, "epochs": 100, "folds": 5, "confirm_repeats": 3, "top_k": 3}
    for key in ("num_samples", "epochs", "outer_folds", "confirm_repeats", "top_k"):
        if getattr(args, key) is not None:
            b[key] = getattr(args, key)
    return b


def slug(data: str) -> str:
    return data.replace(":", "-").replace("=", "").replace(",", "-")


def nested(storage: Path, space: str, data: str, variant: str, b: dict[str, object], log=print) -> dict:
    name = f"ens-{space}-{slug(data)}-{variant.replace('+', '-')}-{b['num_samples']}x{b['epochs']}"
    out = storage / name / "nested.json"
    if not out.is_file():
        argv = [sys.executable, "-m", "search.nested", "--space", space, "--data", data, "--json", "--seed", "0",
                "--storage", str(storage), "--name", name, "--ensemble", variant,
                *(tok for k, v in b.items() for tok in (f"--{k.replace('_', '-')}", str(v)))]
        log(f"  running {name}", flush=True)
        t0 = time.monotonic()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            raise SystemExit(f"{name} failed ({proc.returncode}):\n" + "\n".join(proc.stderr.splitlines()[-15:]))
        log(f"  {name}: {time.monotonic() - t0:.0f} s", flush=True)
    return json.loads(out.read_text())


def pm(est: dict, std: dict) -> str:
    return "-" if METRIC not in est else f"{100 * est[METRIC]:.1f} ± {100 * std[METRIC]:.1f}"


def rows(runs: dict[str, dict]) -> list[tuple[str, dict, dict, str]]:
    """(row, estimate, std, p against the handed-off model of its run) for one space and data set."""
    full, trials = runs.get("trials+references"), runs.get("trials")
    base = full or trials
    out = []
    for label, run in (("handed off (trials + references)", full), ("handed off (trials)", trials)):
        if run is not None:
            out.append((label, run["estimate"], run["std"], ""))
    models = base.get("models", {})
    if "single model" in models:
        out.append(("single champion", models["single model"]["estimate"], models["single model"]["std"],
                    _p(base, "single model")))
    for label, run in (("ensemble (trials + references)", full), ("ensemble (trials)", trials)):
        if run is not None and "ensemble" in run.get("models", {}):
            out.append((label, run["models"]["ensemble"]["estimate"], run["models"]["ensemble"]["std"],
                        _p(run, "ensemble")))
    for k, b in base["baselines"].items():
        if k.startswith("reference:"):
            out.append((k, b["estimate"], b["std"], _p(base, k)))
    return out


def _p(run: dict, row: str) -> str:
    p = run.get("p_values", {}).get(row)
    return "" if p is None else f"{p:.3g}"


def table(reports: dict[tuple[str, str], dict[str, dict]]) -> str:
    lines = ["| data | space | row | macro F1 (%) | p vs the handed-off model of its run |", "|---|---|---|---|---|"]
    for (space, data), runs in reports.items():
        for i, (label, est, std, p) in enumerate(rows(runs)):
            lines.append(f"| {data if i == 0 else ''} | {space if i == 0 else ''} | {label} | {pm(est, std)} | {p} |")
    return "\n".join(lines)


def verdicts(reports: dict[tuple[str, str], dict[str, dict]]) -> list[str]:
    out = []
    for (space, data), runs in reports.items():
        full = runs.get("trials+references") or runs["trials"]
        handed, outer = full["estimate"][METRIC], full["outer_folds"]
        refs = {k: b for k, b in full["baselines"].items() if k.startswith("reference:")}
        best = max(refs, key=lambda k: refs[k]["estimate"][METRIC])
        ref, se = refs[best]["estimate"][METRIC], refs[best]["std"][METRIC] / math.sqrt(outer)
        d = handed - ref
        word = ("at least 1 point above" if d >= 0.01 else "above, by less than 1 point," if d > 0 else
                "below, within one standard error of," if -d <= se else "below, by more than one standard error,")
        champions = ", ".join(o["champion"] for o in full["outer"])
        out.append(f"- {space} on {data}: the handed-off model is {word} the best reference {best} "
                   f"({100 * handed:.1f} vs {100 * ref:.1f} macro F1, {100 * d:+.1f}; outer-fold standard error of the "
                   f"reference {100 * se:.1f}); champions per outer fold: {champions}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", default=None, help="folder of the nested runs (reused: finished ones are read back)")
    p.add_argument("--quick", action="store_true", help="3 outer folds, 3 trials x 5 epochs, baseline on breast-tcga")
    p.add_argument("--spaces", default=None, help=f"comma-separated subset of {','.join(SPACES)}")
    p.add_argument("--datasets", default=None, help=f"comma-separated subset of {','.join(DATASETS)}")
    p.add_argument("--variants", default=None, help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--num-samples", type=int, default=None, help="trials per outer search (default 20)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 100)")
    p.add_argument("--outer-folds", type=int, default=None, help="outer folds (default 5)")
    p.add_argument("--confirm-repeats", type=int, default=None, help="fresh repetitions of the confirmation (default 3)")
    p.add_argument("--top-k", type=int, default=None, help="candidates confirmed and registered per outer search (default 3)")
    args = p.parse_args()
    storage = Path(args.storage or tempfile.mkdtemp(prefix="fusetune-ensembles-")).resolve()
    spaces = args.spaces.split(",") if args.spaces else (["baseline"] if args.quick else list(SPACES))
    datasets = args.datasets.split(",") if args.datasets else (["breast-tcga"] if args.quick else list(DATASETS))
    b = budget(args)
    print(f"machine: {machine()}\nbudget: {b}\nstorage: {storage}", flush=True)
    t0 = time.monotonic()
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    reports = {(s, d): {v: nested(storage, s, d, v, b) for v in variants} for s in spaces for d in datasets}
    print(f"\n{table(reports)}\n")
    print("\n".join(verdicts(reports)))
    print(f"\nwall clock {time.monotonic() - t0:.0f} s; load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
