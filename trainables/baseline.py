"""Early-fusion baseline of CLIMD (Sec. 2, "Baseline") and OmniFuse (Table 4 row (a)).

Per logical modality m an MLP encoder F(x^m) -> R^hidden, the concatenation of the modality
embeddings and the availability mask, and an MLP classifier trained with the criterion
(cross-entropy in the paper).

- Missing modalities enter as zeros plus the mask: a missing modality's input is zero and its
  slot in the fused vector is zero; the mask bits are appended to the fused vector.
- ``modality_dropout`` (default 0: the papers' baseline never sees a missing modality it has):
  in training, OmniFuse's simulated missing patterns (:func:`drop_modalities`); a dropped modality
  enters exactly as a missing one (zero input, zero slot, mask bit 0).
- Token inputs (``kind == "tokens"``) are mean-pooled over their ``token_mask`` before the MLP;
  several inputs of one logical modality (``report.cls`` + ``report.tokens``) are concatenated.
- Unimodal heads (one linear classifier per modality, on the modality embedding) exist so CLIMD
  can read p^m (its Eq.1). They are linear probes: trained with the criterion on *detached*
  embeddings, over the samples that have the modality, so they never change the baseline's own
  representation or prediction (which the fused CE alone trains, as in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainables.backbone import Backbone, BackboneOutput, Batch, Criterion, DataSpec, InputSpec, logical_name
from trainables.members import per_member


@dataclass(frozen=True)
class EarlyFusionConfig:
    """The baseline's hyperparameters (the paper's training defaults, lr 5e-5 and 100 epochs, are
    :class:`trainables.engine.EngineConfig`'s)."""

    hidden: int = 128      # encoder/classifier width (our choice; the papers give none for this MLP)
    dropout: float = 0.1   # dropout of every MLP (our choice)
    modality_dropout: float = 0.0
    """Training-time modality drop (:func:`drop_modalities`): 0 = none, the baseline of the papers;
    OmniFuse's scheme is 1. The same option as OmniFuse's, so a robustness comparison can be run
    with both models trained on the same simulated missing patterns."""

    def __post_init__(self) -> None:
        check_rate("modality_dropout", self.modality_dropout)


def check_rate(key: str, rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"config {key!r} must be in [0, 1], got {rate}")


def drop_modalities(available: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """Training-time modality drop: with probability ``rate`` a sample's modalities are replaced by a
    uniformly drawn non-empty subset of its available ones (all 2^k - 1 subsets of its k available
    modalities equally likely, the complete one included; OmniFuse's scheme, Table 1's patterns);
    otherwise it keeps all of them. ``available`` [B, M] bool -> observed [B, M] bool; a sample
    without any modality stays empty. Draws: the subsets first (each available modality kept with
    probability 1/2, redrawn while empty), then, for 0 < rate < 1, one uniform per sample; nothing
    for rate 0. Expected share of a sample's k available modalities dropped:
    rate * sum_j C(k, j) (k - j) / (k (2^k - 1)), e.g. k = 3: rate * 9/21.

    ``generator``: None draws from torch's default generator; under ``torch.vmap`` (folds trained
    stacked) each member then draws its own pattern from its own generator
    (:func:`trainables.members.per_member`)."""
    if rate <= 0.0:
        return available
    return _sample_drop(available, rate, generator) if generator is not None else _drop_per_member(available, rate)


def _sample_drop(available: Tensor, rate: float, generator: torch.Generator | None) -> Tensor:
    """:func:`drop_modalities` for 0 < rate, drawn from ``generator`` (None: torch's default)."""
    device = available.device
    observed = available & (torch.rand(available.shape, device=device, generator=generator) < 0.5)
    redo = available.any(1) & ~observed.any(1)
    while bool(redo.any()):  # rejection sampling: data-dependent, hence one call per stacked member
        observed[redo] = available[redo] & (torch.rand((int(redo.sum()), available.shape[1]), device=device,
                                                        generator=generator) < 0.5)
        redo = available.any(1) & ~observed.any(1)
    if rate < 1.0:
        keep = torch.rand(available.shape[0], device=device, generator=generator) >= rate
        observed = torch.where(keep[:, None], available, observed)
    return observed


_drop_per_member = per_member("fusetune::drop_modalities")(_sample_drop)


def pool_tokens(x: Tensor, token_mask: Tensor | None) -> Tensor:
    """Mean over the real tokens of [B, L, d] (all tokens without a mask); 0 for a sample with none."""
    if token_mask is None:
        return x.mean(dim=1)
    w = token_mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class ModalityEncoder(nn.Module):
    """e_m / F(x^m): the (pooled, concatenated) inputs of one logical modality -> [B, d_out]."""

    def __init__(self, inputs: list[InputSpec], hidden: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.names = [i.name for i in inputs]
        self.kinds = {i.name: i.kind for i in inputs}
        self.net = mlp(sum(i.dim for i in inputs), hidden, d_out, dropout)

    def forward(self, batch: Batch, available: Tensor) -> Tensor:
        """``available`` [B] bool: unavailable samples are encoded from a zero input."""
        parts = []
        for name in self.names:
            x = batch.inputs[name]
            if self.kinds[name] == "tokens":
                x = pool_tokens(x, batch.token_masks.get(name))
            parts.append(x)
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)  # no copy for the common single input
        x = x * available.to(x.dtype).unsqueeze(-1)
        return self.net(x)


def modality_encoders(spec: DataSpec, hidden: int, d_out: int, dropout: float) -> nn.ModuleList:
    """One :class:`ModalityEncoder` per logical modality, in ``spec.modalities`` order."""
    return nn.ModuleList(
        ModalityEncoder([i for i in spec.inputs if logical_name(i.name) == m], hidden, d_out, dropout)
        for m in spec.modalities
    )


def masked_criterion(criterion: Criterion, logits: Tensor, y: Tensor, keep: Tensor) -> Tensor:
    """The criterion's mean over the rows with ``keep``: sum_i keep_i w_{y_i} l_i / sum_i keep_i w_{y_i}
    (w: the criterion's ``class_weight``, 1 without; as ``criterion(logits[keep], y[keep])``); 0 when
    none is kept. Written without data-dependent shapes, so it runs under ``torch.vmap``."""
    rows = criterion(logits, y, reduction="none")                         # w_{y_i} l_i
    keep = keep.to(rows.dtype)
    weight = getattr(criterion, "class_weight", None)
    den = (keep if weight is None else keep * weight.to(rows.dtype)[y]).sum()
    return (rows * keep).sum() / torch.where(den > 0, den, torch.ones_like(den))


class EarlyFusion(Backbone):
    Config = EarlyFusionConfig

    def __init__(self, spec: DataSpec, config: EarlyFusionConfig = EarlyFusionConfig()) -> None:
        super().__init__(spec)
        self.config = config
        hidden, dropout = config.hidden, config.dropout
        M, C = len(self.modalities), self.num_classes
        self.encoders = modality_encoders(spec, hidden, hidden, dropout)
        self.classifier = mlp(M * hidden + M, hidden, C, dropout)
        self.unimodal_heads = nn.ModuleList(nn.Linear(hidden, C) for _ in range(M))
        self.modality_dropout = config.modality_dropout

    def forward(self, batch: Batch) -> BackboneOutput:
        mask = drop_modalities(batch.mask, self.modality_dropout) if self.training else batch.mask
        emb = torch.stack([enc(batch, mask[:, m]) for m, enc in enumerate(self.encoders)])    # [M, B, d]
        slots = emb * mask.T.unsqueeze(-1).to(emb.dtype)                                      # zeros when missing
        fused = torch.cat([*slots, mask.to(emb.dtype)], dim=-1)                               # [B, M*d + M]
        probe = torch.stack([head(e.detach()) for head, e in zip(self.unimodal_heads, emb)])  # [M, B, C]
        return BackboneOutput(logits=self.classifier(fused), unimodal_logits=probe, embeddings=emb, mask=mask)

    def loss(self, out: BackboneOutput, batch: Batch, criterion: Criterion) -> tuple[Tensor, dict[str, Tensor]]:
        cls = criterion(out.logits, batch.y)
        probe = sum(masked_criterion(criterion, lg, batch.y, out.mask[:, m]) for m, lg in enumerate(out.unimodal_logits))
        return cls + probe, {"loss_cls": cls.detach(), "loss_probe": probe.detach()}
