"""What a finished search handed over, as one comparable value: its results.csv, its confirmation.csv and
the model versions it registered, with what differs between two runs of the same seed taken out.

Ray names a trial by a random id, so each trial is named by its configuration instead (``T0``, ``T1``,
... in the order of their configurations); run times are dropped. A version's aliases move with later
searches, so the promotion is the search's own line instead (``registered model ...: versions ...;
v1 -> alias champion ...``). Everything else is kept as written.

``python tests/search_outputs.py STORAGE NAME OUTPUT > tests/golden/NAME.json`` (OUTPUT: a file with
what the search printed) writes the record a test compares with (tests/test_confirm.py: the outputs
of a fixed-seed search are the recorded ones).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

VOLATILE = {"duration_s"}  # results.csv: wall time


def _trial_names(results: list[dict[str, str]]) -> dict[str, str]:
    configs = {r["trial_id"]: json.dumps({k: v for k, v in r.items() if k.startswith("config/")}, sort_keys=True)
               for r in results if r["status"] != "REFERENCE"}
    order = sorted(configs, key=configs.get)
    return {trial: f"T{i}" for i, trial in enumerate(order)}


def _renamed(text: str, names: dict[str, str]) -> str:
    for trial, name in names.items():
        text = text.replace(trial, name)
    return text


def outputs(storage: Path, name: str, printed: str) -> dict[str, Any]:
    """results.csv, confirmation.csv, the registered versions and the promotion of the search ``name``
    under ``storage``; ``printed``: what it printed."""
    from mlflow import MlflowClient

    folder = storage / name
    results = list(csv.DictReader((folder / "results.csv").open()))
    names = _trial_names(results)
    rows = [{k: _renamed(v, names) for k, v in r.items() if k not in VOLATILE} for r in results]
    confirmation = [{k: _renamed(v, names) for k, v in r.items()}
                    for r in csv.DictReader((folder / "confirmation.csv").open())]
    client = MlflowClient(f"sqlite:///{storage.resolve()}/mlflow.db")
    versions = []
    for found in client.search_model_versions():
        if client.get_run(found.run_id).data.tags.get("fusetune.search_name") != name:
            continue
        versions.append({"name": found.name, "version": int(found.version),
                         "tags": {k: _renamed(t, names) for k, t in sorted(found.tags.items())}})
    promotion = [line for line in printed.splitlines() if line.startswith("registered model ")]
    return {"results": sorted(rows, key=lambda r: r["trial_id"]),
            "confirmation": confirmation,
            "versions": sorted(versions, key=lambda v: (v["name"], v["version"])),
            "promotion": promotion}


def differences(got: Any, want: Any, where: str = "", tol: float = 1e-6) -> list[str]:
    """Where ``got`` differs from ``want``: numbers (also inside strings and JSON) within ``tol``."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{where}: keys {sorted(set(got) ^ set(want))}"] if set(got) != set(want) else []
        return out + [d for k in want if k in got for d in differences(got[k], want[k], f"{where}.{k}", tol)]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items, expected {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in differences(g, w, f"{where}[{i}]", tol)]
    if isinstance(want, str) and isinstance(got, str) and got != want:
        for parse in (float, json.loads):
            try:
                return differences(parse(got), parse(want), where, tol)
            except (ValueError, TypeError):
                continue
        return [f"{where}: {got!r}, expected {want!r}"]
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        same = math.isclose(got, want, rel_tol=tol, abs_tol=tol) or (math.isnan(got) and math.isnan(want))
        return [] if same else [f"{where}: {got!r}, expected {want!r}"]
    return [] if got == want else [f"{where}: {got!r}, expected {want!r}"]


if __name__ == "__main__":
    json.dump(outputs(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]).read_text()), sys.stdout, indent=1,
              sort_keys=True)
    sys.stdout.write("\n")
