"""The backbone contract every method honours, and the tensors that feed it.

A backbone takes a :class:`Batch` (per-input-modality tensors plus availability) and returns a
:class:`BackboneOutput` exposing, per *logical* modality m, an embedding F(x^m) and unimodal class
logits, plus the fused prediction. That is all CLIMD needs to wrap it (Eq.1-4 of CLIMD read the
unimodal probabilities and the embeddings), which makes CLIMD plug-and-play around any backbone.

Input modalities vs logical modalities: after the encoders, one raw modality can give several
inputs named ``<modality>.<representation>`` (e.g. ``report.cls`` and ``report.tokens``); they share
the raw modality's availability. :func:`logical_name` maps an input to its logical modality.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from trainables.config import from_config
from trainables.data.dataset import MultimodalDataset

Criterion = Callable[[Tensor, Tensor], Tensor]
"""A classification loss ``(logits [B, C], y [B]) -> scalar``; plain, weighted CE or focal loss,
chosen by the training loop. Backbones use it for their classification terms."""


def logical_name(input_name: str) -> str:
    return input_name.split(".", 1)[0]


@dataclass(frozen=True)
class InputSpec:
    name: str
    kind: str  # "vector" or "tokens"
    dim: int
    length: int | None = None  # tokens per sample for "tokens"


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its inputs to build its layers."""

    inputs: tuple[InputSpec, ...]
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def modalities(self) -> list[str]:
        """Logical modalities, in first-appearance order of the inputs."""
        return list(dict.fromkeys(logical_name(i.name) for i in self.inputs))

    def input(self, name: str) -> InputSpec:
        return next(i for i in self.inputs if i.name == name)

    @classmethod
    def from_dataset(cls, data: MultimodalDataset) -> DataSpec:
        inputs = []
        for m in data.modalities.values():
            if m.kind not in ("vector", "tokens"):
                raise ValueError(f"modality {m.name!r} is {m.kind}; encode it first (trainables.encoders)")
            length = int(m.values.shape[1]) if m.kind == "tokens" else None
            inputs.append(InputSpec(m.name, m.kind, int(m.values.shape[-1]), length))
        return cls(tuple(inputs), data.num_classes, tuple(data.class_names))


@dataclass
class Batch:
    inputs: dict[str, Tensor]          # per input: [B, d] or [B, L, d]
    token_masks: dict[str, Tensor]     # per token input that has one: [B, L] bool (True = real token)
    mask: Tensor                       # [B, M] bool availability of the logical modalities
    y: Tensor                          # [B] long
    index: Tensor                      # [B] long, row of each sample in its TensorData

    @property
    def size(self) -> int:
        return int(self.y.shape[0])


@dataclass
class BackboneOutput:
    logits: Tensor                     # [B, C] fused prediction
    unimodal_logits: Tensor            # [M, B, C] one head per logical modality
    embeddings: Tensor                 # [M, B, d] per-modality embedding F(x^m), common width d
    mask: Tensor                       # [B, M] availability the model saw (after any simulated drop)
    extras: dict[str, Tensor] = field(default_factory=dict)  # method-specific intermediates for loss()


class Backbone(nn.Module):
    """Base class. Subclasses set ``Config`` (their frozen config dataclass), are built as
    ``cls(spec, config)``, implement ``forward`` and may override ``loss`` and ``end_epoch``."""

    Config: ClassVar[type]
    """The method's config dataclass: the single home of its hyperparameters and their defaults."""

    def __init__(self, spec: DataSpec) -> None:
        super().__init__()
        self.spec = spec
        self.modalities = spec.modalities
        self.num_classes = spec.num_classes

    @classmethod
    def from_config(cls, spec: DataSpec, config: Mapping[str, Any] | Any) -> Backbone:
        """The model from the flat trial config (the keys its ``Config`` declares) or a ``Config``."""
        return cls(spec, from_config(cls.Config, config))

    def forward(self, batch: Batch) -> BackboneOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, out: BackboneOutput, batch: Batch, criterion: Criterion) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss and its named parts (detached 0-d tensors; the training loop reads their values).
        Default: the criterion on the fused logits."""
        loss = criterion(out.logits, batch.y)
        return loss, {"loss_cls": loss.detach()}

    needs_epoch_statistics: bool = False
    """True: :meth:`end_epoch` reads the sums of :meth:`epoch_statistics` over the training part."""

    def epoch_statistics(self, batch: Batch) -> dict[str, Tensor]:
        """Per-row values ([B, ...] each) whose sums over the training part :meth:`end_epoch` reads
        (called in eval mode without gradient, when :attr:`needs_epoch_statistics`). Per row and free
        of Python control flow on tensors, so batched folds compute them for every fold in one
        ``torch.vmap`` call (training parts of different sizes padded, the padding left out of the sums)."""
        return {}

    @torch.no_grad()
    def collect_epoch_statistics(self, train: TensorData, batch_size: int = 256) -> dict[str, Tensor]:
        """The sums over ``train``'s rows of :meth:`epoch_statistics` (eval mode, float64)."""
        was_training = self.training
        self.eval()
        sums: dict[str, Tensor] = {}
        for batch in train.batches(batch_size):
            for key, v in self.epoch_statistics(batch).items():
                sums[key] = sums[key] + v.double().sum(0) if key in sums else v.double().sum(0)
        self.train(was_training)
        return sums

    def end_epoch(self, train: TensorData, criterion: Criterion, statistics: dict[str, Tensor] | None = None
                  ) -> dict[str, float]:
        """Hook run after every training epoch on the whole training part (e.g. OmniFuse's TLA mining).
        ``statistics``: the sums of :meth:`epoch_statistics` over ``train`` where the caller has them
        (batched folds); None: collect them here."""
        return {}

    @torch.no_grad()
    def predict_proba(self, data: TensorData, batch_size: int = 256) -> np.ndarray:
        was_training = self.training
        self.eval()
        probs = [torch.softmax(self(b).logits, dim=-1).cpu() for b in data.batches(batch_size)]
        self.train(was_training)
        return torch.cat(probs).numpy()


class TensorData:
    """A dataset part as tensors on one device, ready to be cut into :class:`Batch` es."""

    def __init__(self, data: MultimodalDataset, device: torch.device | str = "cpu") -> None:
        self.spec = DataSpec.from_dataset(data)
        self.device = torch.device(device)
        self.inputs = {k: torch.as_tensor(m.values, dtype=torch.float32, device=self.device) for k, m in data.modalities.items()}
        self.token_masks = {
            k: torch.as_tensor(m.token_mask, device=self.device) for k, m in data.modalities.items() if m.token_mask is not None
        }
        logical: dict[str, np.ndarray] = {}
        for k, m in data.modalities.items():
            logical.setdefault(logical_name(k), m.mask)
        self.mask = torch.as_tensor(np.stack([logical[n] for n in self.spec.modalities], axis=1), device=self.device)
        self.y = torch.as_tensor(data.labels, dtype=torch.long, device=self.device)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batch(self, idx: Tensor | np.ndarray) -> Batch:
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.device)
        return Batch(
            inputs={k: v[idx] for k, v in self.inputs.items()},
            token_masks={k: v[idx] for k, v in self.token_masks.items()},
            mask=self.mask[idx],
            y=self.y[idx],
            index=idx,
        )

    def batches(self, batch_size: int, order: Tensor | np.ndarray | None = None):
        order = torch.arange(len(self), device=self.device) if order is None else torch.as_tensor(order, device=self.device)
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start:start + batch_size])
