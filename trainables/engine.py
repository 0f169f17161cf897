"""Training engine: one method trained on one fold, epoch by epoch, resumable from a checkpoint.

:class:`FoldTrainer` parses the flat trial config into the typed configs (:func:`parse_config`:
:class:`EngineConfig` below, :class:`trainables.climd.CurriculumConfig`, the method's ``Config``,
:class:`trainables.config.TrialConfig`; a key none of them declares, or a value of the wrong type,
is a one-line :class:`trainables.config.ConfigError`), fits the :class:`Standardizer` on the
fold's training part only, restricts the data to ``modalities`` when given, applies the imbalance
option, builds the model via :mod:`trainables.registry` and trains it with AdamW. The epoch's
samples come from the curriculum (:class:`trainables.climd.Curriculum`; every sample, shuffled,
with ``curriculum = "none"``); it wraps any backbone through the contract (unimodal logits +
per-modality embeddings).

The defaults and the meaning of every key live in the dataclasses (field default and comment):
``EngineConfig`` (optimiser, batch, epochs, imbalance option, modality subset),
``CurriculumConfig`` (curriculum, measurer and their options), the method's config.

Reproducibility: ``seed`` fixes the model initialisation, dropout and any random drop a model
does (a torch RNG state private to the trainer, swapped in around its own work so several
trainers in one process do not disturb each other), the epoch order and curriculum shuffles (a
numpy ``Generator``) and the resamplers. ``state_dict`` holds model, optimizer, epoch, both RNG
states, the curriculum and the standardizer, so training resumed from it continues identically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainables import climd
from trainables.backbone import DataSpec, TensorData, logical_name
from trainables.config import TrialConfig, check_keys, from_config, upgrade
from trainables.data.dataset import MultimodalDataset
from trainables.data.errors import DataError
from trainables.data.preprocess import Standardizer
from trainables.losses import CRITERIA
from trainables.metrics import classification_metrics
from trainables.registry import get_method
from trainables.resampling import RESAMPLERS, VAEConfig

ADAMW_DEFAULTS: dict[str, Any] = {k: p.default for k, p in inspect.signature(torch.optim.AdamW).parameters.items()
                                  if k in ("betas", "eps", "amsgrad", "maximize")}
"""``torch.optim.AdamW``'s own defaults of the settings EngineConfig leaves to it."""


@dataclass(frozen=True)
class EngineConfig:
    """How a fold trains: optimiser, mini-batches, epochs, the imbalance option, the modalities."""

    lr: float = 5e-5                   # AdamW learning rate (CLIMD's paper value)
    weight_decay: float = 1e-4         # AdamW weight decay (our choice)
    batch_size: int = 32               # mini-batch size (our choice)
    epochs: int = 100                  # total epochs T (CLIMD's paper value); the curriculum's schedule needs it
    imbalance: str = "none"
    """A key of :data:`trainables.losses.CRITERIA`: ``none`` (plain CE) | ``weighted_ce`` (w_c = N / (C n_c))
    | ``focal`` | ``undersample`` (random, once per fold) | ``smote`` (once per fold, vector inputs
    only): CLIMD's Table 2 baselines."""
    gamma_focal: float = 2.0           # focal-loss exponent (Lin et al.)
    smote_k: int = 5                   # SMOTE neighbours
    modalities: tuple[str, ...] | None = None
    """Optional subset: logical modality names (``report``) or input names (``report.cls``), as a
    list or a comma-separated string; None keeps all."""

    def __post_init__(self) -> None:
        if self.imbalance not in CRITERIA:
            raise ValueError(f"config 'imbalance': unknown {self.imbalance!r}; expected one of {sorted(CRITERIA)}")
        if self.epochs < 1:
            raise ValueError(f"config 'epochs' must be >= 1, got {self.epochs}")


@dataclass(frozen=True)
class Configs:
    """A trial config parsed: the driver's keys, the engine's, the curriculum's, the method's."""

    trial: TrialConfig
    engine: EngineConfig
    curriculum: climd.CurriculumConfig
    model: Any
    flat: dict[str, Any]
    """Every key with its value or default (what a bundle's ``config.json`` records)."""


def parse_config(method: str, config: Mapping[str, Any]) -> Configs:
    """The flat trial config of ``method`` as typed configs; one-line ``ConfigError`` on an unknown
    key or a value of the wrong type. Keys of older configs are renamed (``trainables.config.RENAMED``)."""
    model_cls = get_method(method).config_class
    classes = (TrialConfig, EngineConfig, climd.CurriculumConfig, model_cls)
    check_keys(config, classes, where=f"{method} config", prefixed={"vae_": VAEConfig})  # imbalance=vae's keys
    config = upgrade(config)
    parsed = [from_config(cls, config) for cls in classes]
    flat: dict[str, Any] = {k: v for k, v in config.items() if v is not None}  # the driver's keys as given
    for part in parsed[1:]:
        flat.update(dataclasses.asdict(part))                                   # the rest as parsed, defaults filled in
    return Configs(*parsed, flat=flat)


def select_modalities(data: MultimodalDataset, wanted) -> MultimodalDataset:
    """Keep the inputs named in ``wanted`` (logical or input names); None keeps all."""
    if wanted is None:
        return data
    names = [w.strip() for w in wanted.split(",")] if isinstance(wanted, str) else [str(w) for w in wanted]
    known = set(data.modalities) | {logical_name(k) for k in data.modalities}
    unknown = [w for w in names if w not in known]
    if unknown or not names:
        raise DataError("config 'modalities'", f"unknown modality {unknown[0] if unknown else '(empty list)'!r}; "
                                               f"available: {', '.join(sorted(known))}")
    keep = {k: m for k, m in data.modalities.items() if k in names or logical_name(k) in names}
    return data.with_modalities(keep)


class FoldTrainer:
    def __init__(self, method: str, config: Mapping[str, Any] | Configs, train: MultimodalDataset,
                 val: MultimodalDataset | None = None, *, seed: int = 0, device: str = "cpu") -> None:
        spec_m = get_method(method)
        self.method = method
        self.configs = config if isinstance(config, Configs) else parse_config(method, config)
        self.config = self.configs.flat
        cfg = self.configs.engine
        imbalance = cfg.imbalance
        self.device = torch.device(device)
        self.seed = int(seed)
        self.epochs = cfg.epochs
        self.batch_size = cfg.batch_size

        train = select_modalities(train, cfg.modalities)
        self.modality_names = list(train.modalities)
        self.class_names = list(train.class_names)
        self.standardizer = Standardizer.fit(train)
        train = self.standardizer.transform(train)
        if imbalance in RESAMPLERS:
            train = RESAMPLERS[imbalance](train, self.config, self.seed)
        self.train_data = TensorData(train, self.device)
        self.val = val
        self._val_tensors: TensorData | None = None  # the validation part as tensors, made once
        self.spec = DataSpec.from_dataset(train)
        self.criterion = CRITERIA[imbalance](train.class_counts(), self.config).to(self.device)

        self.np_rng = np.random.default_rng(self.seed)
        self._cuda = self.device.type == "cuda"
        self._torch_state = torch.Generator().manual_seed(self.seed).get_state()
        self._cuda_state: torch.Tensor | None = None
        with self._own_rng(seed_cuda=True):
            self.model = spec_m.load().from_config(self.spec, self.configs.model).to(self.device)
        # AdamW's param group; torch's optimizer is built from it on first use (:attr:`optimizer`)
        self._group: dict[str, Any] = {"params": list(self.model.parameters()), "lr": cfg.lr,
                                       "weight_decay": cfg.weight_decay, **ADAMW_DEFAULTS}
        self._optimizer: torch.optim.AdamW | None = None
        self.curriculum = climd.Curriculum(train.labels, self.configs.curriculum, self.epochs, self.np_rng)
        self.epoch = 0

    # ------------------------------------------------------------------ optimizer
    @property
    def optimizer(self) -> torch.optim.AdamW:
        """``torch.optim.AdamW(fused=True)`` (one kernel pass over each parameter per step), built on
        first use: per-fold training steps with it; batched folds (:mod:`trainables.batched`) step
        with their own stacked AdamW and need it only for a checkpoint's moments. Building an
        optimizer imports ``torch._dynamo`` (about 1 s, once per process: once per Ray worker)."""
        if self._optimizer is None:
            self._optimizer = torch.optim.AdamW([self._group], fused=True)   # the group dict becomes its group
        return self._optimizer

    @property
    def has_optimizer(self) -> bool:
        """Whether :attr:`optimizer` was built (it holds moments only then)."""
        return self._optimizer is not None

    @property
    def param_group(self) -> dict[str, Any]:
        """AdamW's settings (``lr``, ``weight_decay``, ``betas``, ``eps``): the optimizer's param group
        once built, where a restore or a PBT exploit sets them."""
        return self._group if self._optimizer is None else self._optimizer.param_groups[0]

    # ------------------------------------------------------------------ rng
    @contextlib.contextmanager
    def _own_rng(self, seed_cuda: bool = False):
        """Run with this trainer's torch RNG state as the global one, then save it back."""
        devices = [self.device] if self._cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self._torch_state)
            if self._cuda:
                if seed_cuda:
                    torch.cuda.manual_seed(self.seed)
                else:
                    torch.cuda.set_rng_state(self._cuda_state, self.device)
            yield
            self._torch_state = torch.get_rng_state()
            if self._cuda:
                self._cuda_state = torch.cuda.get_rng_state(self.device)

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def measure_difficulty(self) -> np.ndarray:
        """CLIMD's r (Eq.1-4) for every training sample, from the current model in eval mode."""
        was_training = self.model.training
        self.model.eval()
        probs, feats, masks = [], [], []
        for batch in self.train_data.batches(256):
            out = self.model(batch)
            probs.append(torch.softmax(out.unimodal_logits, dim=-1).cpu())
            feats.append(out.embeddings.cpu())
            masks.append(out.mask.cpu())
        self.model.train(was_training)
        return climd.difficulty(torch.cat(probs, 1).numpy(), self.train_data.y.cpu().numpy(), torch.cat(feats, 1).numpy(),
                                mask=torch.cat(masks).numpy(), measurer=self.curriculum.measurer)

    def train_epoch(self) -> dict[str, float]:
        """One epoch on the curriculum's subset; returns the sample-weighted mean of the loss parts,
        ``loss`` (total), ``epoch_samples`` and whatever the model's ``end_epoch`` reports."""
        if self.epoch >= self.epochs:
            raise RuntimeError(f"all {self.epochs} epochs are done (config 'epochs')")
        sums: dict[str, float] = defaultdict(float)
        seen = 0
        with self._own_rng():
            if self.curriculum.needs_difficulty(self.epoch):
                self.curriculum.set_difficulty(self.measure_difficulty())
            order = self.curriculum.epoch_indices(self.epoch)
            self.model.train()
            for batch in self.train_data.batches(self.batch_size, order=order):
                out = self.model(batch)
                loss, parts = self.model.loss(out, batch, self.criterion)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                sums["loss"] += float(loss.detach()) * batch.size
                for k, v in parts.items():
                    sums[k] += float(v) * batch.size
                seen += batch.size
            end = self.model.end_epoch(self.train_data, self.criterion)
        self.epoch += 1
        return {**{k: v / max(seen, 1) for k, v in sums.items()}, "epoch_samples": float(seen), **end}

    # ------------------------------------------------------------------ prediction
    def prepare(self, data: MultimodalDataset) -> TensorData:
        """A dataset part as tensors, with this fold's modality subset and standardisation."""
        if list(data.class_names) != self.class_names:
            raise DataError(data.name, f"classes {list(data.class_names)} differ from the training classes {self.class_names}")
        missing = [k for k in self.modality_names if k not in data.modalities]
        if missing:
            raise DataError(data.name, f"lacks modality {missing[0]!r} the model was trained on")
        data = data.with_modalities({k: data.modalities[k] for k in self.modality_names})
        return TensorData(self.standardizer.transform(data), self.device)

    def val_tensors(self) -> TensorData:
        """The validation part as tensors: evaluated every epoch, standardised and made tensors once."""
        if self.val is None:
            raise ValueError("this FoldTrainer has no validation part")
        if self._val_tensors is None:
            self._val_tensors = self.prepare(self.val)
        return self._val_tensors

    def predict_proba(self, data: MultimodalDataset) -> np.ndarray:
        if data is not self.val:
            return self.model.predict_proba(self.prepare(data))
        return self.model.predict_proba(self.val_tensors())

    def evaluate(self, data: MultimodalDataset | None = None) -> dict:
        data = self.val if data is None else data
        if data is None:
            raise ValueError("evaluate() needs data: this FoldTrainer has no validation part")
        return classification_metrics(data.labels, self.predict_proba(data), self.class_names)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, optimizer: bool = True) -> dict:
        """Everything a resume needs; ``optimizer=False`` leaves out the optimizer's moments (twice
        the model's size), for a fold that never steps again (a finished trial's checkpoint)."""
        return {
            "model": self.model.state_dict(),
            **({"optimizer": self.optimizer.state_dict()} if optimizer else {}),
            "epoch": self.epoch,
            "rng": {"torch": self._torch_state.clone(), "cuda": None if self._cuda_state is None else self._cuda_state.clone(),
                    "numpy": self.np_rng.bit_generator.state},
            "curriculum": self.curriculum.state_dict(),
            "standardizer": self.standardizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if "optimizer" in state:  # absent from a finished trial's checkpoint: the fold is done
            self.optimizer.load_state_dict(state["optimizer"])
            for group in self.optimizer.param_groups:  # a checkpoint from before fused was the default
                group["foreach"], group["fused"] = None, True
        self.epoch = int(state["epoch"])
        self._torch_state = state["rng"]["torch"].clone()
        if state["rng"]["cuda"] is not None and self._cuda:
            self._cuda_state = state["rng"]["cuda"].clone()
        self.np_rng.bit_generator.state = state["rng"]["numpy"]
        # "sampler": before the rename
        self.curriculum.load_state_dict(state["curriculum" if "curriculum" in state else "sampler"])
        self.standardizer = Standardizer.from_state_dict(state["standardizer"])
        self._val_tensors = None
