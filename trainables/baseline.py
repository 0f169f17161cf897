"""Early-fusion baseline of CLIMD (Sec. 2, "Baseline") and OmniFuse (Table 4 row (a)).

Per logical modality m an MLP encoder F(x^m) -> R^hidden, the concatenation of the modality
embeddings and the availability mask, and an MLP classifier trained with the criterion
(cross-entropy in the paper).

- Missing modalities enter as zeros plus the mask: a missing modality's input is zero and its
  slot in the fused vector is zero; the mask bits are appended to the fused vector.
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


@dataclass(frozen=True)
class EarlyFusionConfig:
    """The baseline's hyperparameters (the paper's training defaults, lr 5e-5 and 100 epochs, are
    :class:`trainables.engine.EngineConfig`'s)."""

    hidden: int = 128      # encoder/classifier width (our choice; the papers give none for this MLP)
    dropout: float = 0.1   # dropout of every MLP (our choice)


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
    """The criterion over the rows with ``keep``; 0 (still in the graph) when none is kept."""
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return criterion(logits[keep], y[keep])


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

    def forward(self, batch: Batch) -> BackboneOutput:
        mask = batch.mask
        emb = torch.stack([enc(batch, mask[:, m]) for m, enc in enumerate(self.encoders)])    # [M, B, d]
        slots = emb * mask.T.unsqueeze(-1).to(emb.dtype)                                      # zeros when missing
        fused = torch.cat([*slots, mask.to(emb.dtype)], dim=-1)                               # [B, M*d + M]
        probe = torch.stack([head(e.detach()) for head, e in zip(self.unimodal_heads, emb)])  # [M, B, C]
        return BackboneOutput(logits=self.classifier(fused), unimodal_logits=probe, embeddings=emb, mask=mask)

    def loss(self, out: BackboneOutput, batch: Batch, criterion: Criterion) -> tuple[Tensor, dict[str, float]]:
        cls = criterion(out.logits, batch.y)
        probe = sum(masked_criterion(criterion, lg, batch.y, out.mask[:, m]) for m, lg in enumerate(out.unimodal_logits))
        return cls + probe, {"loss_cls": float(cls.detach()), "loss_probe": float(probe.detach())}
