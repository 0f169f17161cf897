"""Wall time of the same search with 1 and 2 concurrent trials, and Ray Tune's per-trial overhead.

The search is a real ``python -m search.run`` (baseline space on breast-tcga, 5-fold CV, FIFO so
every trial trains its full budget, seeded random sampling so both runs draw the same
configurations, default SQLite MLflow tracking, no model registration) on a local Ray cluster of
this machine, run twice: ``--max-concurrent 1`` and ``--max-concurrent 2``, each in a fresh
process. Measured per run:

* **search wall**: ``Tuner.fit()`` alone (Ray start, data loading and the final report excluded);
* **in-trial**: the sum over trials of Ray's ``time_total_s``: wall time inside the trainable
  (building the folds' models and training them, reporting, checkpointing);
* **overhead / trial**: ``(c * search wall - in-trial) / N``: slot-seconds per trial not spent
  inside a trainable (actor start, scheduling, result handling, experiment snapshots); with
  ``c = 1`` simply (search wall - in-trial) / N; also per report (one report per epoch: a function
  trainable waits at every report until the driver has taken the result);
* **speed-up**: search wall at concurrency 1 / at concurrency 2, same run of the script.

    FUSETUNE_DATA_DIR=../shared/data python benchmarks/concurrency.py            # 16 trials x 10 epochs
    FUSETUNE_DATA_DIR=../shared/data python benchmarks/concurrency.py --quick    # 6 trials x 4 epochs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from search.select.results import RESULTS_CSV, trial_rows  # noqa: E402

FIT_TIME = "FUSETUNE_BENCH_FIT_S="

# Run in a child process: search.run.main with Tuner.fit timed (the search itself, nothing around it).
CHILD = f"""
import sys, time
from ray import tune
_fit = tune.Tuner.fit
def timed_fit(self):
    t0 = time.perf_counter()
    try:
        return _fit(self)
    finally:
        print("{FIT_TIME}%.3f" % (time.perf_counter() - t0), flush=True)
tune.Tuner.fit = timed_fit
from search.run import main
sys.exit(main(sys.argv[1:]))
"""


def run_search(concurrency: int, args: argparse.Namespace, storage: Path) -> dict[str, float]:
    name = f"concurrency-{concurrency}"
    argv = ["--space", "baseline", "--data", "breast-tcga", "--folds", str(args.folds), "--scheduler", "fifo",
            "--sampler", "random", "--seed", str(args.seed), "--num-samples", str(args.trials),
            "--epochs", str(args.epochs), "--max-concurrent", str(concurrency), "--cpus-per-trial", "1",
            "--top-k", "0", "--storage", str(storage), "--name", name]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], cwd=REPO, env=env, capture_output=True, text=True)
    command_s = time.perf_counter() - t0
    fit = [ln for ln in done.stdout.splitlines() if ln.startswith(FIT_TIME)]
    if done.returncode != 0 or not fit:
        sys.exit(f"search with --max-concurrent {concurrency} failed (exit {done.returncode}):\n"
                 f"{(done.stdout + done.stderr)[-3000:]}")
    rows = list(trial_rows(storage / name / RESULTS_CSV).values())
    if len(rows) != args.trials or not all(r["final"] == "True" for r in rows):
        sys.exit(f"--max-concurrent {concurrency}: expected {args.trials} complete trials in results.csv")
    first_epoch, later_epochs = [], []
    for folder in (storage / name).glob("fusetune_*"):
        its = [json.loads(ln)["time_this_iter_s"] for ln in (folder / "result.json").read_text().splitlines() if ln]
        first_epoch.append(its[0])
        later_epochs += its[1:]
    search_s = float(fit[-1][len(FIT_TIME):])
    in_trial_s = sum(float(r["duration_s"]) for r in rows)
    return {
        "concurrency": concurrency, "command_s": command_s, "search_s": search_s, "in_trial_s": in_trial_s,
        "overhead_s": (concurrency * search_s - in_trial_s) / args.trials,
        "first_epoch_s": sum(first_epoch) / len(first_epoch),
        "epoch_s": sum(later_epochs) / max(1, len(later_epochs)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=16, help="N, trials of the search")
    p.add_argument("--epochs", type=int, default=10, help="epochs per trial")
    p.add_argument("--folds", type=int, default=5, help="k of the cross-validation (search.run's default: 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="6 trials x 4 epochs")
    args = p.parse_args()
    if args.quick:
        args.trials, args.epochs = 6, 4
    if not os.environ.get("FUSETUNE_DATA_DIR"):
        sys.exit("set FUSETUNE_DATA_DIR to the shared data folder (breast-tcga)")

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fusetune-bench-") as tmp:
        runs = [run_search(c, args, Path(tmp)) for c in (1, 2)]
    load_after = os.getloadavg()[0]

    print(f"# Search concurrency: {args.trials} trials x {args.epochs} epochs, baseline on breast-tcga, "
          f"{args.folds}-fold CV")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"1 CPU per trial, local Ray; 1-min load average {load_before:.1f} before, {load_after:.1f} after "
          "(above the CPU count, other work competed for the cores)\n")
    print("| concurrent trials | search wall (s) | whole command (s) | in-trial, summed (s) "
          "| overhead / trial (s) | overhead / report (ms) | first epoch (s) | later epoch (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['concurrency']} | {r['search_s']:.1f} | {r['command_s']:.1f} | {r['in_trial_s']:.1f} "
              f"| {r['overhead_s']:.2f} | {1000 * r['overhead_s'] / args.epochs:.0f} | {r['first_epoch_s']:.2f} "
              f"| {r['epoch_s']:.3f} |")
    print(f"\nspeed-up of the search with 2 concurrent trials: {runs[0]['search_s'] / runs[1]['search_s']:.2f}x")
    print("overhead / trial = (concurrency x search wall - summed in-trial time) / trials; first epoch includes "
          "building the trial's fold models (and, for an actor's first trial, importing torch)")


if __name__ == "__main__":
    main()
