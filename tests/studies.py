"""Study folders for the report/compare/export tests.

:func:`fake_study` writes the files ``python -m search.run`` leaves (Ray's trial folders with
``params.json`` and ``result.json``, and ``results.csv``) with chosen values, for hand-checked
cases. The fixture :func:`tiny_search` runs one real search (``python -m search.run``, baseline space,
breast-tcga, 2 trials x 2 epochs x 2 folds) once per test session, in the background from the
session's start (tests/background.py), for every test module that uses the ``tiny_search`` fixture.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import background
from trainables.metrics import METRICS

ROOT = Path(__file__).resolve().parents[1]
FINGERPRINT = "f" * 64


def fake_trial(folder: Path, trial_id: str, params: dict[str, Any], curve: list[float], *,
               folds: list[float] | None = None, status: str = "TERMINATED", fixed: dict[str, Any] | None = None,
               fingerprint: str = FINGERPRINT) -> dict[str, Any]:
    """One trial folder; ``curve`` = the primary metric (macro_f1) per epoch, ``folds`` = its final
    per-fold values (None: the trial stopped before its last epoch). Other metrics = macro_f1 + 0.1."""
    config = {**(fixed or {}), **params}
    d = folder / f"fusetune_{config.get('method', 'baseline')}_{trial_id}"
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(config))
    lines = []
    for epoch, value in enumerate(curve, 1):
        r: dict[str, Any] = {"epoch": epoch, "loss": 1.0 / epoch, "trial_id": trial_id, "data_fingerprint": fingerprint,
                             "training_iteration": epoch, "config": config}
        final = folds is not None and epoch == len(curve)
        vals = folds if final else [value, value]
        for m in METRICS:
            shift = 0.0 if m == "macro_f1" else 0.1
            mean = sum(vals) / len(vals) if final else value
            r[m] = mean + shift
            r[f"{m}_std"] = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
            if final:
                for k, v in enumerate(vals):
                    r[f"fold{k}_{m}"] = v + shift
        if final:
            r["final"] = True
        lines.append(json.dumps(r))
    (d / "result.json").write_text("\n".join(lines) + "\n")
    return {"trial_id": trial_id, "status": status, "config": config}


def fake_study(storage: Path, name: str, trials: list[dict[str, Any]], *, space: str = "baseline", folds: int = 3,
               seed: int = 0, fingerprint: str = FINGERPRINT) -> Path:
    """A study folder; each ``trials`` entry: ``params``, ``curve``, optional ``folds``, ``status``."""
    folder = storage / name
    fixed = {"method": "baseline", "space": space, "data": "breast-tcga", "seed": seed, "folds": folds,
             "val_fraction": 0.2, "epochs": max(len(t["curve"]) for t in trials), "metric": "macro_f1", "mode": "max",
             "curriculum": "none"}
    rows = []
    for i, t in enumerate(trials):
        if t.get("status") == "ERROR" and not t["curve"]:
            rows.append({"trial_id": f"aaaaa_{i:05d}", "status": "ERROR", "config": {**fixed, **t["params"]}})
            continue
        rows.append(fake_trial(folder, f"aaaaa_{i:05d}", t["params"], t["curve"], folds=t.get("folds"),
                               status=t.get("status", "TERMINATED"), fixed=fixed, fingerprint=fingerprint))
    with (folder / "results.csv").open("w", newline="") as f:
        keys = list(dict.fromkeys(k for r in rows for k in r["config"]))
        w = csv.writer(f)
        w.writerow(["trial_id", "status", "error", *(f"config/{k}" for k in keys)])
        for r in rows:
            w.writerow([r["trial_id"], r["status"], "boom" if r["status"] == "ERROR" else "",
                        *(json.dumps(r["config"][k]) if k in r["config"] else "" for k in keys)])
    return folder


# ----------------------------------------------------------------------------- a real search
TINY = {"space": "baseline", "data": "breast-tcga", "num_samples": 2, "epochs": 2, "folds": 2, "seed": 0}
SECRET = "s3cr3t-never-written"
"""A credential in the tiny search's environment (MLflow's password and token variables): test_integrity
checks that no file or MLflow run of the search holds it."""


@background.search_fixture(seconds=40, scope="session")
def tiny_search(storage: Path) -> dict[str, Any]:
    """``python -m search.run`` on a tiny budget, once per session (a conftest fixture): name,
    storage, folder, tracking URI, the process output and the key file that sealed its state (the
    session's)."""
    name = "tiny"
    cmd = [sys.executable, "-m", "search.run", "--space", TINY["space"], "--data", TINY["data"],
           "--num-samples", str(TINY["num_samples"]), "--epochs", str(TINY["epochs"]), "--folds", str(TINY["folds"]),
           "--seed", str(TINY["seed"]), "--sampler", "random", "--scheduler", "fifo", "--top-k", "1",
           "--confirm-repeats", "1",
           "--cpus-per-trial", "1", "--max-concurrent", "1", "--storage", str(storage), "--name", name]
    env = {**background.environ(), "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0",
           "MLFLOW_TRACKING_PASSWORD": SECRET, "MLFLOW_TRACKING_TOKEN": SECRET}
    env.pop("RAY_ADDRESS", None)
    if "FUSETUNE_DATA_DIR" in env:  # CI gives it relative to the checkout; the search runs elsewhere
        env["FUSETUNE_DATA_DIR"] = str(Path(env["FUSETUNE_DATA_DIR"]).resolve())
    # cwd: whatever the search writes next to itself (e.g. ./mlruns) stays in the tmp folder
    proc = subprocess.run(cmd, cwd=storage, env=env, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"tiny search failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return dict(name=name, storage=storage, folder=storage / name, tracking_uri=f"sqlite:///{(storage / 'mlflow.db').resolve()}",
                output=proc.stdout, stderr=proc.stderr, key=Path(env["FUSETUNE_STATE_KEY_FILE"]))
