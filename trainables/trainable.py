"""Ray Tune function trainables, one per method family (``TRAINABLES[method]``).

A trial builds one :class:`trainables.engine.FoldTrainer` per fold (stratified k-fold, or one
hold-out split with ``folds = 0``), trains the folds in lockstep epoch by epoch and after every
epoch computes (and, at the epochs below, reports with ``tune.report``) the mean over folds of every metric of
:data:`trainables.metrics.METRICS` on the validation folds, its ``<metric>_std``, the mean
training ``loss`` (and loss parts), ``epoch``, ``data_fingerprint`` and ``code_version``; the last
epoch adds ``fold<k>_<metric>`` for every fold and ``final: True``. Only the epochs its scheduler
and the progress line need are reported (:class:`ReportCadence`); a report carries the epochs
since the previous one as ``curve`` (a list of those epochs' numbers), which the MLflow callback
logs with their own steps. A report at least ``checkpoint_every`` epochs after the last
checkpoint, and the last report, carry a checkpoint (``state.pt``: epoch + every fold's
``FoldTrainer.state_dict()``: model, optimizer, RNG states, sampler, standardizer), written to a
fresh folder that Ray persists, so schedulers that pause trials (HyperBand, PBT), retries after a
crash and ``Tuner.restore`` continue exactly from the epoch of the last checkpoint.

Where the method's registry entry says so (``MethodSpec.batches_folds``), the folds'
training runs as one batched model (:class:`trainables.batched.BatchedFolds`, same fold models,
same checkpoint format); ``Trial(..., batch_folds=False)`` trains them one after the other.

A non-finite loss or probability, or any exception while building or training, ends the trial
with :class:`TrialFailure`, whose message is one line; Ray records the trial as ERROR and the
search goes on.

The trial config is parsed at the top of the trial (:func:`trainables.engine.parse_config`; see
ARCHITECTURE.md, "Config path"): the driver's keys (:class:`trainables.config.TrialConfig`:
``method``, ``data``, ``seed``, ``folds``, ``val_fraction``, ``report_at``, ``report_every``,
``report_seconds``, ``checkpoint_every`` (without them: a report and a checkpoint every epoch),
``text_encoder``, ``image_encoder``, ``cache_dir``, ...), the engine's, the curriculum's and the
method's; a key none of them declares, or a value of the wrong type, fails the trial with one line
naming it.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import tune

from trainables.data import MultimodalDataset
from trainables.exit_request import quiet_exit_requests
from trainables.metrics import METRICS, classification_metrics
from trainables.registry import METHODS, get_method
from trainables.trial_data import TrialData, prepare_from_config
from trainables.version import code_version

STATE_FILE = "state.pt"
OOF_FILE = "oof.npz"
"""The final checkpoint's out-of-fold predictions (:func:`save_oof`): what ensemble selection reads."""
CURVE_KEY = "curve"  # search.tracking.results.CURVE_KEY: the epochs since the last report


class TrialFailure(RuntimeError):
    """A trial that cannot go on; ``str()`` is one line naming the cause."""

    def __init__(self, reason: str) -> None:
        super().__init__(" ".join(str(reason).split()))


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# ---------------------------------------------------------------------------------- pure helpers
def summarize(epoch: int, fold_parts: list[dict[str, float]], fold_metrics: list[dict[str, Any]], *,
              final: bool) -> dict[str, Any]:
    """One epoch's report from per-fold training parts and validation metrics.

    Means over folds; ``<metric>_std`` is the population standard deviation over folds (0 for a
    single hold-out split). No validation metrics (a refit): the training parts alone."""
    out: dict[str, Any] = {"epoch": epoch}
    for key in dict.fromkeys(k for parts in fold_parts for k in parts):
        vals = [p[key] for p in fold_parts if key in p]
        out[key] = float(np.mean(vals))
    for m in METRICS if fold_metrics else ():
        vals = np.array([fm[m] for fm in fold_metrics], dtype=float)
        out[m] = float(vals.mean())
        out[f"{m}_std"] = float(vals.std())
    if final:
        for k, fm in enumerate(fold_metrics):
            for m in METRICS:
                out[f"fold{k}_{m}"] = float(fm[m])
        out["final"] = True
    return out


def check_finite(parts: dict[str, float], epoch: int, fold: int) -> None:
    bad = {k: v for k, v in parts.items() if not math.isfinite(v)}
    if bad:
        detail = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise TrialFailure(f"non-finite training loss at epoch {epoch}, fold {fold}: {detail}")


def save_state(folder: Path, epoch: int, trainers: list, optimizer: bool = True) -> Path:
    """``state.pt`` written under a temporary name and renamed, so a reader never sees half a file;
    ``optimizer=False``: the folds' weights and states without the optimizer's moments."""
    path = folder / STATE_FILE
    tmp = folder / (STATE_FILE + ".tmp")
    torch.save({"epoch": epoch, "folds": [t.state_dict(optimizer=optimizer) for t in trainers]}, tmp)
    os.replace(tmp, path)
    return path


def load_state(folder: Path) -> dict[str, Any]:
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)


def save_oof(folder: Path, oof: dict[str, np.ndarray]) -> Path:
    """``oof.npz`` (numpy arrays only, read back with ``allow_pickle=False``): ``index`` (positions in
    the training part), ``fold`` (the search fold each was validated in), ``labels``, ``probs``
    [n, C], ``epoch`` and the data ``fingerprint``; written whole, then renamed."""
    path = folder / OOF_FILE
    tmp = folder / (OOF_FILE + ".tmp.npz")
    np.savez(tmp, **oof)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------- the trial
class Trial:
    """The folds of one trial, trained in lockstep. Usable without Ray (tests, notebooks)."""

    def __init__(self, method: str, config: dict[str, Any], data: TrialData, *, device: str = "cpu",
                 batch_folds: bool = True, refit: bool = False, seeds: Sequence[int] | None = None) -> None:
        """``batch_folds=False`` trains the folds one after the other even where the method batches them.
        ``refit=True``: one model on the whole training part instead of the folds (seed ``config["seed"]``,
        no validation part, so :meth:`step` reports the training parts alone), like scikit-learn's
        ``refit``: the deployable model of a configuration (:func:`search.handoff.refit.refit`).
        ``seeds``: several repetitions of the k folds (repetition r splits with ``seeds[r]`` and
        initialises its fold j with ``seeds[r] + j``, as a trial of that seed would), trained in one
        lockstep, batched as R x k members where the method batches folds (the confirmation stage);
        fold ``r * k + j`` of :meth:`step`'s report is repetition r's fold j. Default: ``config["seed"]``."""
        from trainables.engine import FoldTrainer, parse_config  # torch-heavy import, inside the worker

        self.configs = parse_config(method, config)  # typed; an unknown key or a wrong type fails here, in one line
        self.config = config
        self.epochs = self.configs.engine.epochs
        self.data = data
        seed = self.configs.trial.seed
        self.seeds = [int(s) for s in seeds] if seeds else [seed]
        self.trainers = []
        self.splits: list[tuple[np.ndarray, np.ndarray]] = []  # every repetition's folds, one after the other
        self.fold_probs: list[np.ndarray] = []  # the last epoch's validation probabilities, per fold
        if refit:
            self.trainers.append(FoldTrainer(method, self.configs, data.data, None, seed=seed, device=device))
        else:
            for rep_seed in self.seeds:
                splits = data.fold_splits(self.configs.trial.folds, rep_seed, self.configs.trial.val_fraction)
                self.splits.extend(splits)
                for k, (tr, va) in enumerate(splits):
                    train, val = data.data.take(tr), data.data.take(va)
                    self.trainers.append(FoldTrainer(method, self.configs, train, val, seed=rep_seed + k,
                                                     device=device))
        self.batched = None  # all folds as one stacked model where the method's registry entry allows it
        spec = get_method(method)
        if spec.batches_folds and batch_folds and not refit:
            from trainables.batched import BatchedFolds

            self.batched = BatchedFolds(self.trainers)
        self.epoch = 0

    def step(self, evaluate: bool = True) -> dict[str, Any]:
        """Train every fold one epoch, evaluate on the validation folds (if any; ``evaluate=False``:
        not this epoch, the report has the training parts alone), return the report."""
        epoch = self.epoch + 1
        fold_parts, fold_metrics, fold_probs = [], [], []
        batched = self.batched.train_epoch() if self.batched is not None else None
        evaluate = evaluate and self.trainers[0].val is not None
        # every fold's validation probabilities in one vmapped pass where the folds train batched
        batched_probs = self.batched.validation_probs() if batched is not None and evaluate else None
        for k, t in enumerate(self.trainers):
            parts = batched[k] if batched is not None else t.train_epoch()
            check_finite(parts, epoch, k)
            fold_parts.append(parts)
            if evaluate:
                metrics, probs = self._evaluate(t.val, t, epoch, k, None if batched_probs is None else batched_probs[k])
                fold_metrics.append(metrics)
                fold_probs.append(probs)
        self.epoch = epoch
        self.fold_probs = fold_probs
        return summarize(epoch, fold_parts, fold_metrics, final=epoch == self.epochs)

    @staticmethod
    def _evaluate(val: MultimodalDataset, trainer, epoch: int, fold: int,
                  probs: np.ndarray | None = None) -> tuple[dict[str, Any], np.ndarray]:
        """The fold's metrics on ``val`` from ``probs`` (predicted here when None)."""
        probs = trainer.predict_proba(val) if probs is None else probs
        if not np.isfinite(probs).all():
            raise TrialFailure(f"non-finite predicted probabilities at epoch {epoch}, fold {fold}")
        return classification_metrics(val.labels, probs, trainer.class_names), probs

    def out_of_fold(self, repeat: int = 0) -> dict[str, np.ndarray]:
        """The last epoch's validation predictions of every fold of repetition ``repeat``, as
        :func:`save_oof` stores them."""
        if not self.fold_probs:
            return {}
        k = len(self.splits) // len(self.seeds)
        splits, probs = self.splits[repeat * k:(repeat + 1) * k], self.fold_probs[repeat * k:(repeat + 1) * k]
        index = np.concatenate([va for _, va in splits]).astype(np.int64)
        fold = np.concatenate([np.full(len(va), j, np.int64) for j, (_, va) in enumerate(splits)])
        return {"index": index, "fold": fold, "labels": self.data.data.labels[index].astype(np.int64),
                "probs": np.concatenate(probs).astype(np.float64), "epoch": np.int64(self.epoch),
                "fingerprint": np.str_(self.data.fingerprint)}

    def state(self, folder: Path) -> Path:
        """The checkpoint; once every epoch is done, the weights without the optimizer's moments
        (a third of the size: nothing steps again; export, refit and robustness read weights)."""
        optimizer = self.epoch < self.epochs
        if self.batched is not None:
            self.batched.sync(optimizer)
        return save_state(folder, self.epoch, self.trainers, optimizer=optimizer)

    def restore(self, folder: Path) -> None:
        state = load_state(folder)
        if len(state["folds"]) != len(self.trainers):
            raise TrialFailure(f"checkpoint has {len(state['folds'])} folds, the trial {len(self.trainers)}")
        for t, s in zip(self.trainers, state["folds"]):
            t.load_state_dict(s)
            # a PBT exploit restarts from another trial's optimizer state with a perturbed config
            t.param_group["lr"] = t.configs.engine.lr
            t.param_group["weight_decay"] = t.configs.engine.weight_decay
        if self.batched is not None:
            self.batched.reload()
        self.epoch = int(state["epoch"])


def _device() -> str:
    import ray

    return "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"


def _cpus() -> int:
    try:
        resources = tune.get_context().get_trial_resources().required_resources
        return max(1, int(resources.get("CPU", 1)))
    except Exception:  # noqa: BLE001 - outside a Tune session there is no context
        return 1


def run_trial(method: str, config: dict[str, Any], data: TrialData | None = None) -> None:
    """The body of every trainable; ``data`` comes from the object store when the driver put it."""
    quiet_exit_requests()  # the raylet's SIGTERM at the trial's end prints no traceback
    torch.set_num_threads(_cpus())
    meta = {"code_version": code_version()}
    try:
        if config.get("method", method) != method:
            raise TrialFailure(f"config method {config['method']!r} given to the {method!r} trainable")
        # None marks a dimension inactive in this trial (PBT's population shares one key set)
        config = {**{k: v for k, v in config.items() if v is not None}, "method": method}
        data = data if data is not None else prepare_from_config(config)
        meta["data_fingerprint"] = data.fingerprint
        trial = Trial(method, config, data, device=_device())
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                trial.restore(Path(folder))
    except TrialFailure:
        raise
    except Exception as exc:
        raise TrialFailure(one_line(exc)) from exc

    cadence = ReportCadence.from_config(config, trial.epochs)
    curve: list[dict[str, Any]] = []        # the epochs since the last report, for MLflow's curves
    last_checkpoint = trial.epoch
    while trial.epoch < trial.epochs:
        try:
            result = {**trial.step(), **meta}
        except TrialFailure:
            raise
        except Exception as exc:
            raise TrialFailure(f"epoch {trial.epoch + 1}: {one_line(exc)}") from exc
        if not cadence.due(trial.epoch):
            curve.append(result)
            continue
        if curve:
            result[CURVE_KEY] = [curve_entry(r) for r in curve]
            curve = []
        cadence.reported()
        if trial.epoch - last_checkpoint < cadence.checkpoint_every and trial.epoch < trial.epochs:
            tune.report(result)
            continue
        last_checkpoint = trial.epoch
        with tempfile.TemporaryDirectory(prefix="fusetune-ckpt-") as folder:
            trial.state(Path(folder))
            if trial.epoch == trial.epochs and trial.fold_probs:  # the full budget: ensemble selection reads it
                save_oof(Path(folder), trial.out_of_fold())
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))


def curve_entry(result: dict[str, Any]) -> dict[str, float]:
    """An unreported epoch's numbers (``epoch``, loss parts, metrics and their ``_std``)."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class ReportCadence:
    """Which epochs a trial reports to Ray Tune (config keys ``report_at``, ``report_every``,
    ``report_seconds``, ``checkpoint_every``; see ``search.tune.schedulers.CADENCES``): the
    scheduler's milestones, every ``report_every``-th epoch, the first epoch at least
    ``report_seconds`` after the last report, the last epoch. Without the keys (a config from an
    older search, a test): every epoch."""

    def __init__(self, epochs: int, at: list[int], every: int, seconds: float, checkpoint_every: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.epochs, self.at, self.every, self.seconds = epochs, set(at), every, seconds
        self.checkpoint_every = max(1, checkpoint_every)
        self.clock = clock
        self.last = clock()

    @classmethod
    def from_config(cls, config: dict[str, Any], epochs: int) -> ReportCadence:
        if "report_every" not in config:
            return cls(epochs, [], 1, 0.0, int(config.get("checkpoint_every", 1)))
        return cls(epochs, [int(e) for e in config.get("report_at") or []], int(config["report_every"]),
                   float(config.get("report_seconds", 0.0)), int(config.get("checkpoint_every", 1)))

    def due(self, epoch: int) -> bool:
        return (epoch >= self.epochs or epoch in self.at or (self.every > 0 and epoch % self.every == 0)
                or (self.seconds > 0 and self.clock() - self.last >= self.seconds))

    def reported(self) -> None:
        self.last = self.clock()


def make_trainable(method: str) -> Callable[..., None]:
    """The function trainable of one method family, named ``fusetune_<method>``."""

    def trainable(config: dict[str, Any], data: TrialData | None = None) -> None:
        run_trial(method, config, data)

    trainable.__name__ = trainable.__qualname__ = f"fusetune_{method}"
    trainable.__doc__ = f"Ray Tune function trainable of the {method!r} method family."
    return trainable


TRAINABLES: dict[str, Callable[..., None]] = {name: make_trainable(name) for name in METHODS}
globals().update({fn.__name__: fn for fn in TRAINABLES.values()})  # importable by name, so workers unpickle by reference


def register_trainables() -> None:
    """Register every family with Ray Tune as ``fusetune-<method>`` (e.g. for ``tune.Tuner("fusetune-omnifuse")``)."""
    for name, fn in TRAINABLES.items():
        tune.register_trainable(f"fusetune-{name}", fn)
