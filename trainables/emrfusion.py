"""Multimodal EMR fusion (seed paper 003): attention-enhanced modality features, L2-normalised
concatenation, modality alignment, orthogonality, dynamic feature weighting, residual classifier.

The paper fuses a text and an image; here any number M >= 2 of logical modalities, each built
from its inputs:

- text (``<m>.cls`` vector + ``<m>.tokens``): ``H_T`` = the [CLS] vector (Eq.1-3); attention
  pooling of the word embeddings against ``H_T`` (Eq.8-9) gives ``H_T^att``.
- image (``<m>.pooled`` vector and/or ``<m>.map`` / ``<m>.patches`` tokens): ``H_I`` = the global
  average pooled vector (Eq.4-5; GAP of the map when no pooled vector is given); channel attention
  over the feature map (Eq.10-12) gives ``H_I^att``.
- any other vector modality (EHR table): ``H_m`` = the vector itself, no attention.

Per modality, ``u_m = P_m(H_m) [+ P_m^att(H_m^att)]`` projects to the common width ``hidden``
(the attention-enhanced feature is added to the global one when ``self_attention`` is on).
Then, over the available modalities of each sample:

- Eq.6-7   ``H = [u_1; ...; u_M] / ||[u_1; ...; u_M]||_2``; ``u~_m`` is the m-th slice of H
  (a missing modality's slice is zero).
- Eq.17-18 ``alpha_m = sigmoid(W_m u~_m)`` (a scalar per modality and sample),
  ``H_weighted = sum_m alpha_m u~_m``; with ``dynamic_weighting`` off every ``alpha_m = 1``.
- Eq.19-21 ``H_final = ReLU(W_f H_weighted + b_f)`` (``+ H_weighted`` with ``residual`` on: the
  residual connection around the fusion layer that "preserves the original features"),
  ``P = softmax(W_c H_final + b_c)``.
- Losses: ``CE + align_weight * L_align + ortho_weight * L_ortho`` where ``L_align`` (Eq.14-16)
  and ``L_ortho`` (Eq.13) are taken over every pair of modalities, on the projected features
  ``u_m`` of the samples that have both (see :func:`alignment_loss`, :func:`orthogonality_loss`).
  ``alignment`` off drops ``L_align`` (the paper's ablation switch).

Documented choices where the paper is loose:
- Eq.8 ``dot(H_T, e_i)`` is scaled by ``1/sqrt(d)`` (scaled dot-product) and masked to real tokens.
  ``H_T`` reaches the model standardised (the fold's Standardizer), the word tokens as the encoder
  gave them; the dot product is then a per-dimension reweighted similarity.
- Eq.12 as printed, ``sum_c beta_c X_c``, collapses the channels into one spatial map. We keep the
  channel axis: ``H_I^att = C' * beta (.) z`` (the channel descriptor z of Eq.10 reweighted by the
  softmax weights of Eq.11, SE-style; the factor C' keeps its scale since beta ~ 1/C').
- Eq.13 ``||H_T^T H_I||_2`` is read as the paper states it, for feature *vectors*: the absolute
  inner product of a sample's two (projected) features, "required to be close to zero"; summed over
  the sample's modality pairs. Both losses are divided by the number n of samples of the batch that
  have the pair (Eq.16 ``||S - I||_F^2`` becomes a per-sample row sum) so their weights do not
  depend on the batch size.
- ``L_align`` wants a sample's two features parallel (S_ii -> 1) while ``L_ortho`` wants them
  orthogonal: the paper's two losses pull against each other. ``L_align`` is scale-free and
  ``L_ortho`` is not, so ``L_ortho`` can mostly be met by shrinking feature norms, which Eq.7's
  normalisation makes harmless. Their weights (not given by the paper) are search dimensions; the
  defaults are small.
- Unimodal heads (backbone contract, read by CLIMD) are probes on the detached ``u_m``: they do not
  change the method's own training signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.backbone import Backbone, BackboneOutput, Batch, Criterion, DataSpec, InputSpec, logical_name
from trainables.baseline import masked_criterion


@dataclass(frozen=True)
class EMRFusionConfig:
    """The EMR fusion model's hyperparameters."""

    hidden: int = 128               # common width of the projected features (our choice)
    dropout: float = 0.1            # dropout of the projections and the classifier (our choice)
    alignment: bool = True          # Eq.14-16 (ablation switch)
    self_attention: bool = True     # Eq.8-12 (ablation switch)
    residual: bool = True           # residual connection around the fusion layer (ablation switch)
    dynamic_weighting: bool = True  # Eq.17-18 (ablation switch)
    align_weight: float = 0.1       # not given by the paper: a search dimension
    ortho_weight: float = 0.01      # not given by the paper: a search dimension

    def __post_init__(self) -> None:
        if self.align_weight < 0 or self.ortho_weight < 0:
            raise ValueError(f"emrfusion: align_weight and ortho_weight must be >= 0, "
                             f"got {self.align_weight}, {self.ortho_weight}")


# ------------------------------------------------------------------------- the paper's equations
def alignment_loss(h_a: Tensor, h_b: Tensor, rows: Tensor | None = None) -> Tensor:
    """Eq.14-16: ``||S - I||_F^2`` with ``S_ij = cos(h_a^i, h_b^j)`` over the rows of [n, d] inputs
    selected by ``rows`` ([n] bool; all rows without it). Masked, not indexed: no data-dependent
    shapes, so it runs under ``torch.vmap`` (batched folds)."""
    s = F.normalize(h_a, dim=-1) @ F.normalize(h_b, dim=-1).T   # Eq.14-15
    err = (s - torch.eye(s.shape[0], device=s.device, dtype=s.dtype)).pow(2)
    if rows is None:
        return err.sum()
    r = rows.to(s.dtype)
    return (err * r.unsqueeze(1) * r.unsqueeze(0)).sum()


def orthogonality_loss(h_a: Tensor, h_b: Tensor, rows: Tensor | None = None) -> Tensor:
    """Eq.13: ``sum_i ||(h_a^i)^T h_b^i||_2 = sum_i |<h_a^i, h_b^i>|`` over the rows of [n, d] inputs
    selected by ``rows`` ([n] bool; all rows without it)."""
    inner = (h_a * h_b).sum(-1).abs()
    return inner.sum() if rows is None else (inner * rows.to(inner.dtype)).sum()


def attention_pooling(h_t: Tensor, e: Tensor, valid: Tensor) -> Tensor:
    """Eq.8-9: ``alpha_i = softmax_i(<H_T, e_i> / sqrt(d))`` over real tokens, ``H_T^att = sum_i alpha_i e_i``.

    h_t [B, d], e [B, n, d], valid [B, n]; a sample without any real token gets zeros.
    """
    scores = (e @ h_t.unsqueeze(-1)).squeeze(-1) / math.sqrt(e.shape[-1])
    any_valid = valid.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(~valid & any_valid, float("-inf")).masked_fill(~any_valid, 0.0)
    alpha = torch.softmax(scores, dim=-1) * any_valid       # no real token -> all weights 0
    return (alpha.unsqueeze(-1) * e).sum(1)


def channel_attention(x: Tensor, valid: Tensor) -> Tensor:
    """Eq.10-12 on a feature map given as tokens x [B, h'w', C'] (valid [B, h'w']).

    ``z_c`` = spatial mean of channel c (Eq.10), ``beta = softmax(z)`` (Eq.11), and
    ``H_I^att = C' * beta (.) z`` (Eq.12 with the channel axis kept, see the module docstring).
    """
    w = valid.to(x.dtype).unsqueeze(-1)
    z = (x * w).sum(1) / w.sum(1).clamp_min(1.0)
    beta = torch.softmax(z, dim=-1)
    return z.shape[-1] * beta * z


# ------------------------------------------------------------------------------- modality features
ATTENTION = {"tokens": "text", "map": "image", "patches": "image"}
"""Token representation -> the attention of the paper that reads it (Eq.8-9 text, Eq.10-12 image)."""


class ModalityFeature(nn.Module):
    """``u_m = P_m(H_m) [+ P_m^att(H_m^att)]`` for one logical modality, from its inputs."""

    def __init__(self, name: str, inputs: list[InputSpec], hidden: int, dropout: float, self_attention: bool) -> None:
        super().__init__()
        vectors = [i for i in inputs if i.kind == "vector"]
        tokens = [i for i in inputs if i.kind == "tokens"]
        if len(vectors) > 1 or len(tokens) > 1:
            raise ValueError(f"emrfusion: modality {name!r} has inputs {[i.name for i in inputs]}; "
                             "expected at most one vector and one token input")
        self.vector = vectors[0] if vectors else None
        self.tokens = tokens[0] if tokens else None
        rep = self.tokens.name.split(".", 1)[-1] if self.tokens else None
        if self.tokens is not None and rep not in ATTENTION:
            raise ValueError(f"emrfusion: token input {self.tokens.name!r} has representation {rep!r}; "
                             f"expected one of {sorted(ATTENTION)}")
        self.attention = ATTENTION[rep] if (self.tokens is not None and self_attention) else None
        if self.attention == "text" and self.vector is None:
            raise ValueError(f"emrfusion: text tokens {self.tokens.name!r} need the [CLS] vector input "
                             f"'{name}.cls' for the attention of Eq.8")
        if self.attention == "text" and self.vector.dim != self.tokens.dim:
            raise ValueError(f"emrfusion: {self.vector.name!r} (d={self.vector.dim}) and {self.tokens.name!r} "
                             f"(d={self.tokens.dim}) must share the encoder width for Eq.8")
        d_global = self.vector.dim if self.vector is not None else self.tokens.dim
        self.P = nn.Sequential(nn.Linear(d_global, hidden), nn.Dropout(dropout))
        if self.attention is not None:
            self.P_att = nn.Sequential(nn.LayerNorm(self.tokens.dim), nn.Linear(self.tokens.dim, hidden), nn.Dropout(dropout))

    def forward(self, batch: Batch) -> Tensor:
        if self.tokens is not None:
            e = batch.inputs[self.tokens.name]
            valid = batch.token_masks.get(self.tokens.name, torch.ones(e.shape[:2], dtype=torch.bool, device=e.device))
        if self.vector is not None:
            h = batch.inputs[self.vector.name]
        else:  # Eq.5 / Eq.10: global average pooling of the token map
            w = valid.to(e.dtype).unsqueeze(-1)
            h = (e * w).sum(1) / w.sum(1).clamp_min(1.0)
        u = self.P(h)
        if self.attention == "text":
            u = u + self.P_att(attention_pooling(h, e, valid))
        elif self.attention == "image":
            u = u + self.P_att(channel_attention(e, valid))
        return u


class EMRFusion(Backbone):
    Config = EMRFusionConfig

    def __init__(self, spec: DataSpec, config: EMRFusionConfig = EMRFusionConfig()) -> None:
        super().__init__(spec)
        self.config = config
        hidden, dropout, alignment, self_attention = config.hidden, config.dropout, config.alignment, config.self_attention
        residual, dynamic_weighting = config.residual, config.dynamic_weighting
        align_weight, ortho_weight = config.align_weight, config.ortho_weight
        if len(self.modalities) < 2:
            raise ValueError(f"emrfusion: needs at least 2 modalities, got {self.modalities}")
        self.alignment, self.residual, self.dynamic_weighting = bool(alignment), bool(residual), bool(dynamic_weighting)
        self.self_attention = bool(self_attention)
        self.align_weight, self.ortho_weight = float(align_weight), float(ortho_weight)
        self.features = nn.ModuleList([
            ModalityFeature(m, [i for i in spec.inputs if logical_name(i.name) == m], hidden, dropout, self.self_attention)
            for m in self.modalities
        ])
        if self.dynamic_weighting:
            self.W_alpha = nn.ModuleList([nn.Linear(hidden, 1) for _ in self.modalities])   # Eq.17
        self.W_f = nn.Linear(hidden, hidden)                                                # Eq.19
        self.drop = nn.Dropout(dropout)
        self.W_c = nn.Linear(hidden, self.num_classes)                                      # Eq.20
        self.unimodal_heads = nn.ModuleList([nn.Linear(hidden, self.num_classes) for _ in self.modalities])

    def forward(self, batch: Batch) -> BackboneOutput:
        avail = batch.mask.to(torch.float32)                                        # [B, M]
        u = torch.stack([f(batch) for f in self.features]) * avail.T.unsqueeze(-1)  # [M, B, d], missing -> 0
        # Eq.6-7: L2-normalised concatenation; u_tilde[m] is the m-th slice of H_TI^reg.
        norm = u.pow(2).sum(dim=(0, 2)).clamp_min(1e-24).sqrt()                     # [B]; finite grad at 0
        u_tilde = u / norm.unsqueeze(-1)
        if self.dynamic_weighting:                                                  # Eq.17
            alpha = torch.stack([torch.sigmoid(w(x)).squeeze(-1) for w, x in zip(self.W_alpha, u_tilde)])
        else:
            alpha = torch.ones_like(avail.T)
        alpha = alpha * avail.T                                                     # [M, B]
        h = (alpha.unsqueeze(-1) * u_tilde).sum(0)                                  # Eq.18 H_weighted
        h_final = F.relu(self.W_f(h))                                               # Eq.19
        if self.residual:
            h_final = h_final + h
        logits = self.W_c(self.drop(h_final))                                       # Eq.20 (softmax in the loss)
        unimodal = torch.stack([head(x.detach()) for head, x in zip(self.unimodal_heads, u)])
        return BackboneOutput(logits, unimodal, u, batch.mask, {"alpha": alpha.T})

    def loss(self, out: BackboneOutput, batch: Batch, criterion: Criterion) -> tuple[Tensor, dict[str, Tensor]]:
        ce = criterion(out.logits, batch.y)
        l_align, l_ortho = ce.new_zeros(()), ce.new_zeros(())
        pairs = list(combinations(range(len(self.modalities)), 2))
        for a, b in pairs:                          # over the n samples that have both (0 when n = 0)
            rows = out.mask[:, a] & out.mask[:, b]
            n = rows.sum().to(ce.dtype).clamp_min(1.0)
            ua, ub = out.embeddings[a], out.embeddings[b]
            if self.alignment:
                l_align = l_align + alignment_loss(ua, ub, rows) / n / len(pairs)
            l_ortho = l_ortho + orthogonality_loss(ua, ub, rows) / n / len(pairs)
        probe = ce.new_zeros(())
        for k in range(len(self.modalities)):
            probe = probe + masked_criterion(criterion, out.unimodal_logits[k], batch.y, out.mask[:, k]) / len(self.modalities)
        total = ce + self.align_weight * l_align + self.ortho_weight * l_ortho
        parts = {"loss_ce": ce.detach(), "loss_align": l_align.detach(), "loss_ortho": l_ortho.detach(),
                 "loss_probe": probe.detach()}
        return total + probe, parts
