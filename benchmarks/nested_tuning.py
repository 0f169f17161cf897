"""Does tuning pay? Nested estimates of "tune with N trials" vs the paper default vs references.

For baseline, baseline + CLIMD and OmniFuse on breast-tcga and ``rosmap:ratio=5``, one
``python -m search.nested`` each: 5 outer folds of the training part; per outer fold a complete
40-trial TPE + ASHA search (5-fold inner CV, 100 epochs, its confirmation stage on 3 fresh
repetitions), whose confirmed champion is scored once on the held-out outer fold. Next to it, in
the same command and on the same outer folds: the space's paper default and the two reference
models (standardised L2 logistic regression with inner-CV C; random forest) trained on the outer
training part and scored on the outer test fold. Also each outer search's *selection gap*: its
champion's figure on the search's folds minus its figure on the fresh confirmation folds.

All figures are mean ± std over outer folds (population std), in percent; every row of a block
saw the same patients for training and for scoring. The tuned row is the only unbiased estimate of
what tuning delivers; the search's own CV figure for its winner is not.

    FUSETUNE_DATA_DIR=../shared/data python benchmarks/nested_tuning.py --storage DIR   # hours on 2 cores
    FUSETUNE_DATA_DIR=../shared/data python benchmarks/nested_tuning.py --quick          # reduced budget
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from searches import REPO, machine

DATASETS = ("breast-tcga", "rosmap:ratio=5")
SPACES = ("baseline", "climd", "omnifuse")
METRICS = ("macro_f1", "accuracy", "auroc")


def budget(quick: bool) -> dict[str, object]:
    if quick:
        return {"outer_folds": 3, "num_samples": 4, "epochs": 10, "folds": 3, "confirm_repeats": 1}
    return {"outer_folds": 5, "num_samples": 40, "epochs": 100, "folds": 5, "confirm_repeats": 3}


def slug(data: str) -> str:
    return data.replace(":", "-").replace("=", "").replace(",", "-")


def nested(storage: Path, space: str, data: str, b: dict[str, object], log=print) -> dict:
    name = f"nested-{space}-{slug(data)}-{b['num_samples']}x{b['epochs']}"
    out = storage / name / "nested.json"
    if not out.is_file():
        argv = [sys.executable, "-m", "search.nested", "--space", space, "--data", data, "--json", "--seed", "0",
                "--storage", str(storage), "--name", name, "--top-k", "1",
                *(tok for k, v in b.items() for tok in (f"--{k.replace('_', '-')}", str(v)))]
        log(f"  running {name}")
        t0 = time.monotonic()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed ({proc.returncode}):\n" + "\n".join(proc.stderr.splitlines()[-15:]))
        log(f"  {name}: {time.monotonic() - t0:.0f} s")
    report = json.loads(out.read_text())
    report["gaps"] = [gap(storage / o["search"] / "confirmation.csv") for o in report["outer"]]
    return report


def gap(path: Path) -> float | None:
    """Selection gap of an outer search's champion: search figure minus confirmed figure."""
    if not path.is_file():
        return None
    rows = list(csv.DictReader(path.open()))
    metric = next(k for k in rows[0] if k.startswith("confirmed_") and not k.endswith("_std"))[len("confirmed_"):]
    model = next((r for r in rows if r["kind"] == "model" and r[f"search_{metric}"]), None)
    return None if model is None else float(model[f"search_{metric}"]) - float(model[f"confirmed_{metric}"])


def pm(est: dict, std: dict, m: str) -> str:
    return "-" if m not in est else f"{100 * est[m]:.1f} ± {100 * std[m]:.1f}"


def table(reports: dict[tuple[str, str], dict]) -> str:
    lines = ["| data | space | row | " + " | ".join(METRICS) + " | selection gap (macro F1) |",
             "|---|---|---|" + "---|" * (len(METRICS) + 1)]
    for (space, data), r in reports.items():
        gaps = [g for g in r["gaps"] if g is not None]
        g = f"{100 * np.mean(gaps):+.1f} (outer folds: {', '.join(f'{100 * x:+.1f}' for x in gaps)})" if gaps else "-"
        lines.append(f"| {data} | {space} | tuned (nested) | " + " | ".join(pm(r["estimate"], r["std"], m) for m in METRICS)
                     + f" | {g} |")
        for k, b in r["baselines"].items():
            lines.append(f"| | | {k} | " + " | ".join(pm(b["estimate"], b["std"], m) for m in METRICS) + " | |")
    return "\n".join(lines)


def verdicts(reports: dict[tuple[str, str], dict]) -> list[str]:
    out = []
    for (space, data), r in reports.items():
        tuned = r["estimate"]["macro_f1"]
        refs = {k: b["estimate"]["macro_f1"] for k, b in r["baselines"].items() if k.startswith("reference:")}
        best = max(refs, key=refs.get)
        word = "beats" if tuned > refs[best] else "does not beat"
        out.append(f"- {space} on {data}: tuning {word} the best reference ({best}): macro F1 {100 * tuned:.1f} vs "
                   f"{100 * refs[best]:.1f}; paper default {100 * r['baselines']['paper-default']['estimate']['macro_f1']:.1f}.")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", default=None, help="folder of the nested searches (reused: finished ones are read back)")
    p.add_argument("--quick", action="store_true", help="3 outer folds, 4 trials x 10 epochs, baseline only")
    p.add_argument("--spaces", default=None, help=f"comma-separated subset of {','.join(SPACES)}")
    args = p.parse_args()
    storage = Path(args.storage or tempfile.mkdtemp(prefix="fusetune-nested-")).resolve()
    spaces = args.spaces.split(",") if args.spaces else (["baseline"] if args.quick else list(SPACES))
    b = budget(args.quick)
    print(f"machine: {machine()}\nbudget: {b}\nstorage: {storage}")
    t0 = time.monotonic()
    reports = {(s, d): nested(storage, s, d, b) for d in DATASETS for s in spaces}
    print(f"\n{table(reports)}\n")
    print("\n".join(verdicts(reports)))
    print(f"\nwall clock {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
