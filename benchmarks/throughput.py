"""Throughput: what a trial costs through the engine and through a search, against a bare loop.

Side by side, on the same configurations, data (breast-tcga's training part), folds and epochs:

(a) **bare loop**: the `baseline` space's early-fusion network (one MLP per modality, the
    concatenation of the modality embeddings and the availability mask, an MLP classifier, linear
    probes on the detached embeddings) written here in plain PyTorch as a competent user would
    write it for speed: one thread, tensors standardised once per fold, a shuffled index per epoch,
    fused AdamW, the probes' loss as weights (no data-dependent shapes), the validation macro F1
    every epoch by argmax + ``bincount``, folds one after the other. The floor: a faster loop would
    make every ratio below worse, never better.
(b) **engine**: ``trainables.trainable.Trial(method, config, data).step()`` per epoch outside Ray
    (every fold trained and evaluated every epoch, as in a search). **(b2)**: the same trials in two
    processes at once (started together, one thread each, each taking the next trial when it is
    free, as Tune's two workers do): what
    two trainings at once cost on this machine with no search around them (shared caches and
    memory bandwidth), the floor for (c) at 2 concurrent.
(c) **search**: ``python -m search.run --space baseline --sampler random --scheduler fifo
    --top-k 0`` with ``--max-concurrent 1`` and ``2``, each in a fresh process; the search wall is
    ``Tuner.fit()`` (from the command's ``steps:`` line), so Ray's start is excluded.
(d) **one small search end to end**: 1 trial, ``--top-k 1`` (refit, test evaluation,
    registration, reports), command start to exit, with its ``steps:`` line; again with
    ``--confirm-repeats 3``: the confirmation of one candidate is the difference of the ``models``
    steps, compared with the trial's own ``search`` step.
(e) **disk**: an ``omnifuse-paper`` grid search of a few trials; bytes per trial with every
    trial's checkpoint (before the end-of-search pruning) and after it, extrapolated to the
    729-point grid.

All trials use fixed configurations: the space's paper default, then ``--points`` drawn here
(seeded) from the space's ranges with plain cross-entropy (``imbalance none``, which the bare loop
implements), so (a), (b) and (c) train the same 16 models. Per-epoch cost = wall / (trials x
epochs); fixed cost per trial = ((c) search wall x concurrency - (b)'s wall) / trials (all a search
adds to training the same models); at 2 concurrent also against (b2): (2 x (c) - 2 x (b2)) / trials,
what the search adds beyond two trainings at once; peak disk: each search folder's size sampled every 0.5 s.
(a) to (d) run ``--rounds`` times (default 3), one round after another; the last table gives the
figures issue 27 asks for, with their targets, as the medians of the rounds' own ratios (a ratio's
two walls always come from the same round) and their range.

    FUSETUNE_DATA_DIR=../shared/data python benchmarks/throughput.py            # 16 trials x 50 epochs
    FUSETUNE_DATA_DIR=../shared/data python benchmarks/throughput.py --quick    # 4 trials x 10 epochs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from search.prepare.config import SearchConfig  # noqa: E402
from search.prepare.resolve import resolve  # noqa: E402
from search.select.results import RESULTS_CSV, trial_rows  # noqa: E402
from search.tune.orchestrate import fixed_keys  # noqa: E402
from spaces import get_space  # noqa: E402
from trainables.metrics import classification_metrics  # noqa: E402
from trainables.trainable import Trial  # noqa: E402
from trainables.trial_data import TrialData, fold_splits, prepare_from_config  # noqa: E402

STEPS_LINE = re.compile(r"^steps: (.*)$", re.M)


# ----------------------------------------------------------------------------- configurations
def points(n: int, seed: int) -> list[dict]:
    """``n - 1`` configurations drawn from the baseline space's ranges (log-uniform lr and weight
    decay), plain cross-entropy; the search enqueues them after the paper default."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n - 1):
        out.append({"lr": float(10 ** rng.uniform(-4, -2.5)), "weight_decay": float(10 ** rng.uniform(-6, -1)),
                    "batch_size": int(rng.choice([16, 32, 64, 128])), "hidden": int(rng.choice([32, 64, 128, 256])),
                    "dropout": float(rng.uniform(0.0, 0.5)), "imbalance": "none"})
    return out


def trial_configs(args: argparse.Namespace) -> list[dict]:
    """The configs the search's trials get: fixed keys + paper default, then the points."""
    cfg = resolve(SearchConfig(space="baseline", data="breast-tcga", folds=args.folds, epochs=args.epochs,
                               seed=args.seed, sampler="random", scheduler="fifo"))
    space = get_space("baseline")
    base = {**space.default_config(), **fixed_keys(cfg, space)}
    return [base] + [{**base, **p} for p in points(args.trials, args.seed)]


# ----------------------------------------------------------------------------- (a) the bare loop
def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class BareEarlyFusion(nn.Module):
    def __init__(self, dims: list[int], classes: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(_mlp(d, hidden, hidden, dropout) for d in dims)
        self.classifier = _mlp(len(dims) * hidden + len(dims), hidden, classes, dropout)
        self.probes = nn.ModuleList(nn.Linear(hidden, classes) for _ in dims)

    def forward(self, xs: list[torch.Tensor], mask: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        emb = [enc(x * mask[:, j:j + 1]) * mask[:, j:j + 1] for j, (enc, x) in enumerate(zip(self.encoders, xs))]
        logits = self.classifier(torch.cat([*emb, mask], dim=1))
        return logits, [p(e.detach()) for p, e in zip(self.probes, emb)]


def macro_f1(y: torch.Tensor, pred: torch.Tensor, classes: int) -> float:
    """Macro F1 from the confusion matrix (one ``bincount``): 2 TP / (2 TP + FP + FN) per class."""
    confusion = torch.bincount(y * classes + pred, minlength=classes * classes).view(classes, classes)
    tp = confusion.diagonal().double()
    return float((2 * tp / (confusion.sum(0) + confusion.sum(1)).double().clamp_min(1)).mean())


def bare_fold(data: TrialData, train: np.ndarray, val: np.ndarray, config: dict, seed: int) -> dict:
    """One fold as a competent user writes it: tensors standardised once, a shuffled index per
    epoch, AdamW, cross-entropy (the probes' over the samples with the modality, as weights: no
    data-dependent shapes), the validation macro F1 every epoch by argmax + ``bincount``."""
    mods = list(data.data.modalities.values())
    xs_tr, xs_va = [], []
    for m in mods:
        x = np.nan_to_num(m.values.astype(np.float32))
        avail = m.mask[train]
        mean = x[train][avail].mean(axis=0) if avail.any() else np.zeros(x.shape[1], np.float32)
        std = x[train][avail].std(axis=0) if avail.any() else np.ones(x.shape[1], np.float32)
        z = (x - mean) / np.where(std < 1e-6, 1.0, std)
        xs_tr.append(torch.from_numpy(z[train].astype(np.float32)))
        xs_va.append(torch.from_numpy(z[val].astype(np.float32)))
    mask = torch.from_numpy(np.stack([m.mask for m in mods], axis=1).astype(np.float32))
    mask_tr, mask_va = mask[train], mask[val]
    y = torch.from_numpy(data.data.labels[train].astype(np.int64))
    y_va = torch.from_numpy(data.data.labels[val].astype(np.int64))
    classes = len(data.data.class_names)
    torch.manual_seed(seed)
    model = BareEarlyFusion([x.shape[1] for x in xs_tr], classes, int(config["hidden"]), float(config["dropout"]))
    # fused: one kernel for every parameter's update (on these small models about 20% of the loop;
    # the engine's stacked AdamW updates one flat buffer likewise)
    opt = torch.optim.AdamW(model.parameters(), lr=float(config["lr"]), weight_decay=float(config["weight_decay"]),
                            fused=True)
    gen = torch.Generator().manual_seed(seed)
    bs = int(config["batch_size"])
    curve = []
    for _ in range(int(config["epochs"])):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(bs):
            logits, probes = model([x[idx] for x in xs_tr], mask_tr[idx])
            yb, mb = y[idx], mask_tr[idx]
            loss = F.cross_entropy(logits, yb)
            for j, p in enumerate(probes):
                loss = loss + (F.cross_entropy(p, yb, reduction="none") * mb[:, j]).sum() / mb[:, j].sum().clamp_min(1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            logits_va = model(xs_va, mask_va)[0]
        curve.append(macro_f1(y_va, logits_va.argmax(1), classes))
    probs = torch.softmax(logits_va, dim=1).numpy()
    return {**classification_metrics(data.data.labels[val], probs), "curve": curve}


def run_bare(configs: list[dict], data: TrialData, args: argparse.Namespace) -> dict:
    splits = fold_splits(data.data.labels, args.folds, args.seed)
    f1 = []
    t0 = time.perf_counter()
    for config in configs:
        f1.append(np.mean([bare_fold(data, tr, va, config, args.seed + k)["macro_f1"]
                           for k, (tr, va) in enumerate(splits)]))
    return {"wall_s": time.perf_counter() - t0, "macro_f1": float(np.mean(f1))}


# ----------------------------------------------------------------------------- (b) the engine
def run_engine(configs: list[dict], data: TrialData) -> dict:
    f1 = []
    t0 = time.perf_counter()
    for config in configs:
        trial = Trial("baseline", config, data)
        while trial.epoch < trial.epochs:
            last = trial.step()
        f1.append(last["macro_f1"])
    return {"wall_s": time.perf_counter() - t0, "macro_f1": float(np.mean(f1))}


def _engine_half(configs: list[dict], queue: Any, ready: Any) -> float:
    """(b2)'s child process: the data, then, once both children are ready (so they train at the same
    time), the trials of ``configs`` whose index it takes next from ``queue`` (as Tune gives the next
    trial to whichever worker is free) until none is left; its own wall."""
    import queue as queues

    torch.set_num_threads(1)
    data = prepare_from_config(configs[0])
    ready.wait()
    t0 = time.perf_counter()
    while True:
        try:
            i = queue.get_nowait()
        except queues.Empty:
            return time.perf_counter() - t0
        run_engine([configs[i]], data)


def run_engine_pair(configs: list[dict]) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    spawn = multiprocessing.get_context("spawn")
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # one thread per process, as Ray gives a 1-CPU trial's worker
    try:
        with spawn.Manager() as manager, ProcessPoolExecutor(2, mp_context=spawn) as pool:
            ready, queue = manager.Barrier(2), manager.Queue()
            for i in range(len(configs)):
                queue.put(i)
            walls = list(pool.map(_engine_half, [configs] * 2, [queue] * 2, [ready] * 2))
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return {"wall_s": max(walls), "walls": walls}


# ----------------------------------------------------------------------------- (c, d, e) searches
def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class PeakDisk:
    """The most a folder held while a command ran (its size sampled every half second)."""

    def __init__(self, path: Path) -> None:
        self.path, self.bytes, self._stop = path, 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(OSError):  # a file deleted while it is walked
                self.bytes = max(self.bytes, folder_bytes(self.path))

    def __enter__(self) -> PeakDisk:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.bytes = max(self.bytes, folder_bytes(self.path))


def steps(stdout: str) -> dict[str, float]:
    found = STEPS_LINE.findall(stdout)
    if not found:
        return {}
    out = {}
    for part in found[-1].split(", "):
        name, _, value = part.rpartition(" ")
        out[name] = float(value.rstrip("s"))
    return out


def run_search(argv: list[str], storage: Path, name: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "search.run", *argv, "--storage", str(storage), "--name", name]
    t0 = time.perf_counter()
    peak = PeakDisk(storage)
    with peak:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    command_s = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    rows = list(trial_rows(storage / name / RESULTS_CSV).values())
    reports = sum(sum(1 for ln in (d / "result.json").read_text().splitlines() if ln.strip())
                  for d in (storage / name).glob("fusetune_*") if (d / "result.json").is_file())
    deleted = re.search(r"deleted \(([\d.]+) MiB\)", done.stdout)
    return {"command_s": command_s, "steps": steps(done.stdout), "rows": rows, "reports": reports,
            "in_trial_s": sum(float(r["duration_s"]) for r in rows), "bytes": folder_bytes(storage),
            "experiment_bytes": folder_bytes(storage / name),
            "kept_checkpoint_bytes": sum(folder_bytes(c) for c in (storage / name).glob("fusetune_*/checkpoint_*")),
            # what grows with the trials: their folders (reports, params) and the MLflow store
            "per_trial_files": sum(folder_bytes(d) for d in (storage / name).glob("fusetune_*"))
            + sum(p.stat().st_size for p in storage.glob("mlflow.db*")),
            "pruned_bytes": float(deleted.group(1)) * 2**20 if deleted else 0.0, "peak_bytes": peak.bytes,
            "stdout": done.stdout}


def search_argv(args: argparse.Namespace, trials: int, concurrency: int, top_k: int, repeats: int = 0) -> list[str]:
    argv = ["--space", "baseline", "--data", "breast-tcga", "--folds", str(args.folds), "--epochs", str(args.epochs),
            "--sampler", "random", "--scheduler", "fifo", "--seed", str(args.seed), "--num-samples", str(trials),
            "--max-concurrent", str(concurrency), "--cpus-per-trial", "1", "--top-k", str(top_k),
            # the trials' cost only unless asked: the confirmation stage is more training by design
            "--confirm-repeats", str(repeats), "--references", "none"]
    for p in points(trials, args.seed):
        argv += ["--points", json.dumps(p)]
    return argv


# ----------------------------------------------------------------------------- main
def one_round(args: argparse.Namespace, configs: list[dict], data: TrialData, tmp: Path) -> dict[str, dict]:
    """(a) to (d) once, one after the other."""
    return {"bare": run_bare(configs, data, args), "engine": run_engine(configs, data),
            "pair": run_engine_pair(configs),
            "c1": run_search(search_argv(args, args.trials, 1, 0), tmp / "c1", "c1"),
            "c2": run_search(search_argv(args, args.trials, 2, 0), tmp / "c2", "c2"),
            "one": run_search(search_argv(args, 1, 1, 1), tmp / "one", "one"),
            "conf": run_search(search_argv(args, 1, 1, 1, repeats=3), tmp / "conf", "conf")}


def round_figures(m: dict[str, dict], trials: int) -> dict[str, float]:
    """The issue's figures from one round: every ratio has its numerator and denominator from the same round."""
    bare, engine = m["bare"]["wall_s"], m["engine"]["wall_s"]
    c1, c2 = m["c1"]["steps"].get("search", float("nan")), m["c2"]["steps"].get("search", float("nan"))
    one_trial = m["one"]["steps"].get("search", float("nan"))
    confirm_s = m["conf"]["steps"].get("models", float("nan")) - m["one"]["steps"].get("models", float("nan"))
    pair = m["pair"]["wall_s"]
    return {"one_trial": c1 / bare, "fixed1": (c1 - engine) / trials, "fixed2": (2 * c2 - engine) / trials,
            "fixed2_pair": (2 * c2 - 2 * pair) / trials, "pair_cost": 2 * pair / engine, "pair_speedup": engine / pair,
            "per_epoch": engine / bare, "confirm": confirm_s / one_trial, "confirm_s": confirm_s,
            "one_trial_s": one_trial, "speedup": c1 / c2}


def print_round(r: int, m: dict[str, dict], args: argparse.Namespace) -> None:
    bare, engine, epochs = m["bare"], m["engine"], args.trials * args.epochs

    def row(label: str, wall: float, note: str = "") -> str:
        return (f"| {r} | {label} | {wall:.1f} | {wall / bare['wall_s']:.2f}x | {1000 * wall / epochs:.1f} | {note} |")

    print(row("(a) bare PyTorch loop", bare["wall_s"], f"macro F1 {bare['macro_f1']:.4f}; folds one after the other, "
              "validation every epoch"))
    print(row("(b) engine `Trial` outside Ray", engine["wall_s"], f"macro F1 {engine['macro_f1']:.4f}; batched folds, "
              "metrics every epoch"))
    pair = m["pair"]
    print(row("(b2) engine, two processes at once", pair["wall_s"], "the next trial to the free one; their walls "
              + " and ".join(f"{w:.1f} s" for w in pair["walls"])
              + f"; 2 x (b2) / (b) = {2 * pair['wall_s'] / engine['wall_s']:.2f}"))
    for label, c, conc in (("(c) search.run, 1 concurrent", m["c1"], 1), ("(c) search.run, 2 concurrent", m["c2"], 2)):
        wall = c["steps"].get("search", float("nan"))
        print(row(label, wall, f"Tuner.fit only; {c['reports']} reports; in-trial {c['in_trial_s']:.1f} s; "
                  f"fixed cost per trial {(conc * wall - engine['wall_s']) / args.trials:.2f} s; command "
                  f"{c['command_s']:.1f} s; {c['bytes'] / args.trials / 2**20:.2f} MiB per trial kept, "
                  f"peak {c['peak_bytes'] / 2**20:.1f} MiB"))


def print_disk(disk: dict, args: argparse.Namespace) -> None:
    n = max(1, len(disk["rows"]))
    kept = disk["kept_checkpoint_bytes"]                        # the top trial's checkpoint
    growing = disk["per_trial_files"] - kept                      # trial folders and MLflow store
    handed = disk["bytes"] - growing - kept                       # registered model, bundle, reports
    before = (disk["bytes"] + disk["pruned_bytes"]) / n
    print(f"disk, omnifuse-paper grid ({n} trials x {args.disk_epochs} epochs, 5 folds, top-k 1): "
          f"{(growing + disk['pruned_bytes'] + kept) / n / 2**20:.2f} MiB per trial with every trial's checkpoint, "
          f"{growing / n / 2**20:.2f} MiB per trial after pruning (trial folder + MLflow), plus "
          f"{kept / 2**20:.1f} MiB kept checkpoint and {handed / 2**20:.1f} MiB registered model, bundle and reports; "
          f"729 trials extrapolated: {(729 * before) / 2**30:.2f} GiB without pruning, "
          f"{(handed + kept + 729 * growing / n) / 2**30:.2f} GiB after; peak {disk['peak_bytes'] / 2**20:.1f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3,
                    help="(a) to (d) this many times, one round after another; the figures are the medians of "
                         "the rounds' own ratios (default 3: one run's figures move by up to 20%% on a VM)")
    ap.add_argument("--disk-trials", type=int, default=12, help="trials of the omnifuse-paper grid for (e)")
    ap.add_argument("--disk-epochs", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="4 trials x 10 epochs, 3 folds, 1 round; 3 grid trials")
    args = ap.parse_args()
    if args.quick:
        args.trials, args.epochs, args.folds, args.rounds, args.disk_trials, args.disk_epochs = 4, 10, 3, 1, 3, 2
    torch.set_num_threads(1)  # one core per trial, as in the search (--cpus-per-trial 1)

    configs = trial_configs(args)
    data = prepare_from_config(configs[0])
    print(f"# throughput: {args.trials} trials x {args.epochs} epochs, {args.folds}-fold, baseline on breast-tcga, "
          f"{args.rounds} round(s)\n")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, torch {torch.__version__}, "
          f"load average at start {os.getloadavg()[0]:.1f}\n")
    print("| round | run | wall (s) | vs (a) | per trial-epoch (ms) | note |")
    print("|---|---|---|---|---|---|")
    rounds = []
    for r in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="fusetune-throughput-") as tmp:
            m = one_round(args, configs, data, Path(tmp))
        print_round(r, m, args)
        rounds.append(m)
    with tempfile.TemporaryDirectory(prefix="fusetune-throughput-") as tmp:
        disk = run_search(["--space", "omnifuse-paper", "--data", "breast-tcga", "--sampler", "grid", "--scheduler", "fifo",
                           "--num-samples", str(args.disk_trials), "--epochs", str(args.disk_epochs), "--folds", "5",
                           "--top-k", "1", "--seed", str(args.seed)], Path(tmp) / "disk", "disk")
    figs = [round_figures(m, args.trials) for m in rounds]

    def med(key: str, fmt: str = ".2f", unit: str = "x") -> str:
        values = [f[key] for f in figs]
        spread = f" (rounds {min(values):{fmt}}-{max(values):{fmt}})" if len(values) > 1 else ""
        return f"{float(np.median(values)):{fmt}}{unit}{spread}"

    c1 = rounds[0]["c1"]
    print(f"\n| figure (median of {len(figs)} round(s)) | measured | target |")
    print("|---|---|---|")
    print(f"| one trial in a search vs the bare loop | {med('one_trial')} | <= 1.3x |")
    print(f"| fixed cost per trial (search wall x concurrency - engine wall, per trial) | "
          f"{med('fixed1', unit=' s')} at 1, {med('fixed2', unit=' s')} at 2 concurrent | < 1 s at 2 |")
    print(f"| fixed cost per trial at 2 concurrent against (b2), two engine processes at once "
          f"((2 x search wall - 2 x (b2) wall) / trials) | {med('fixed2_pair', unit=' s')} | - |")
    print(f"| two engine processes at once vs one, (b) / (b2): the machine's own 2-at-once speed-up | "
          f"{med('pair_speedup')} | - |")
    print(f"| per-epoch ratio, engine vs bare loop | {med('per_epoch')} | <= 1.1x |")
    print(f"| confirmation of one candidate on 3 repetitions vs one trial | {med('confirm_s', '.1f', ' s')} / "
          f"{med('one_trial_s', '.1f', ' s')} = {med('confirm')} | <= 1.5x |")
    print(f"| 2 concurrent trials vs 1 | {med('speedup')} | >= 1.8x |")
    print(f"| bytes per trial (round 1, 1 concurrent: kept / peak while running) | "
          f"{c1['bytes'] / args.trials / 2**20:.2f} / {c1['peak_bytes'] / args.trials / 2**20:.2f} MiB | - |")
    one, conf = rounds[-1]["one"], rounds[-1]["conf"]
    print(f"\n1-trial search end to end (top-k 1, last round): {one['command_s']:.1f} s; steps: "
          + ", ".join(f"{k} {v:.1f}s" for k, v in one["steps"].items()))
    print("the same with 3 confirmation repetitions: steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in conf["steps"].items()))
    print_disk(disk, args)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
