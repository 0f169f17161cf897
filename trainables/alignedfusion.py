"""AlignedFusion (seed paper 002): attribute-wise report tokens, intermediate-token fusion, masked
token reconstruction; and the plain self-attention fusion it is compared with.

Report side (Eq.5): one token per report attribute. A mentioned attribute's token is the text
encoder's [CLS] of a short prompt for its value (input ``<report>.attributes``, token_mask =
mentioned); an unmentioned one is the learned UN token ``t_UN``. Learned attribute-position
embeddings say which attribute a token stands for.

Visual side (Eq.3): every other input. Token inputs (ViT ``patches`` or ResNet ``map``) give one
token per patch / spatial cell with learned position embeddings; a vector input (e.g. ``ehr``)
gives ONE extra token on the visual side (documented choice: the paper fuses one report with one
image; further modalities join the information-rich side so the report keeps a single bridge).

Intermediate-token fusion (Eq.6-8), every layer: the same token ``t_int`` is appended to both sets
(``t'_v = [t_v; t_int]``, ``t'_r = [t_int; t_r]``), each set runs its own self-attention block, and
the two updated copies of ``t_int`` are averaged and written back to both. ``t_int`` is then the
only path between the modalities. ``intermediate_token=False`` is the paper's "w/o IT" ablation:
each set attends directly to the other set's tokens (token-wise cross-attention).

Masked token reconstruction (Eq.9-10): in training, each mentioned attribute token is replaced by
``t_UN`` with probability ``mask_p``; a reconstruction head ``F_rec`` reads the fused report tokens
and predicts the masked tokens; ``l_rec`` is a cross-entropy over masked tokens only (see
:func:`reconstruction_loss` for the reading of "CE between tokens"). Genuinely unmentioned
attributes enter as ``t_UN`` in training and test alike; their fused outputs, which ``l_rec`` trains
to decode the attribute's value, are the "filled" tokens the classifier reads (documented choice:
the reconstruction lives in the fused latent slot, as in BERT's [MASK] positions, rather than being
decoded and re-encoded). Nothing is masked in eval mode.

Classifier (Eq.11): ``t_cls = [mean(t_r); mean(t_v); t_int]`` (each set pooled separately so the
many visual tokens do not drown the few report tokens), then an MLP ``F_d``;
``l_all = l_d + rec_weight * l_rec``.

Width/depth (paper: ViT/Swin tokens, depth not given): ``hidden`` = 128, ``depth`` = 2 fusion
layers, 4 heads: small enough to train on a laptop CPU, and depth >= 2 so the bridge carries
information into the report tokens themselves (after one layer only ``t_int`` has seen both sides).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.backbone import Backbone, BackboneOutput, Batch, Criterion, DataSpec, InputSpec, logical_name


@dataclass(frozen=True)
class AlignedFusionConfig:
    """AlignedFusion's hyperparameters."""

    hidden: int = 128               # token width d (our choice; the paper uses the ViT width)
    depth: int = 2                  # fusion layers (our choice; not given in the paper)
    heads: int = 4                  # attention heads (our choice)
    dropout: float = 0.1            # dropout of attention, MLPs and classifier (our choice)
    mask_p: float = 0.3             # Eq.9, paper p = 0.3 (Table 4b sweeps 0..0.5)
    rec_weight: float = 1.0         # l_all = l_d + rec_weight * l_rec (paper: 1)
    intermediate_token: bool = True # False = "w/o IT" ablation (direct token-wise cross-attention)

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_p < 1.0:
            raise ValueError(f"alignedfusion: mask_p must be in [0, 1), got {self.mask_p}")
        if self.rec_weight < 0:
            raise ValueError(f"alignedfusion: rec_weight must be >= 0, got {self.rec_weight}")


@dataclass(frozen=True)
class SelfAttentionConfig:
    """The self-attention baseline's hyperparameters: AlignedFusion's transformer, same defaults."""

    hidden: int = AlignedFusionConfig.hidden
    depth: int = AlignedFusionConfig.depth
    heads: int = AlignedFusionConfig.heads
    dropout: float = AlignedFusionConfig.dropout


ATTRIBUTES = "attributes"
"""Representation name of the report attribute tokens (``<report>.attributes``)."""


# ---------------------------------------------------------------------------------------- helpers
def masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``x`` [B, L, d] over the tokens where ``valid`` [B, L]; zeros where none is valid."""
    w = valid.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


def _key(name: str) -> str:
    return name.replace(".", "__")  # nn.ModuleDict keys may not contain "."


def _attribute_input(spec: DataSpec, method: str) -> InputSpec:
    found = [i for i in spec.inputs if i.kind == "tokens" and i.name.endswith("." + ATTRIBUTES)]
    if len(found) != 1:
        raise ValueError(
            f"{method}: needs exactly one '<report>.{ATTRIBUTES}' token input (encode the report with the "
            f"'{ATTRIBUTES}' representation); got inputs {[i.name for i in spec.inputs]}"
        )
    return found[0]


class Block(nn.Module):
    """Pre-norm transformer block: ``x`` attends to ``[x; context]`` (self-attention when no context)."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ln_mlp = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor, context: Tensor | None = None, context_valid: Tensor | None = None) -> Tensor:
        h = self.ln_attn(x)
        kv, kv_valid = h, valid
        if context is not None:
            kv = torch.cat([h, self.ln_attn(context)], dim=1)
            kv_valid = torch.cat([valid, context_valid], dim=1)
        a = self.attn(h, kv, kv, key_padding_mask=~kv_valid, need_weights=False)[0]
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.ln_mlp(x)))


class AttributeTokens(nn.Module):
    """Eq.5: value token of a mentioned attribute, ``t_UN`` otherwise, plus attribute-position embeddings."""

    def __init__(self, d_text: int, num_attributes: int, d: int) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.LayerNorm(d_text), nn.Linear(d_text, d))
        self.t_UN = nn.Parameter(0.02 * torch.randn(d))
        self.position = nn.Parameter(0.02 * torch.randn(num_attributes, d))

    def forward(self, tokens: Tensor, unknown: Tensor) -> Tensor:
        x = self.embed(tokens)
        x = torch.where(unknown.unsqueeze(-1), self.t_UN.expand_as(x), x)
        return x + self.position


class VisualTokens(nn.Module):
    """The visual side (Eq.3): token inputs give one token per patch/cell, a vector input one token.

    Returns the tokens [B, N, d], their validity [B, N] (token_mask AND the sample has that
    modality) and, per logical modality, a bool [N] selecting its tokens.
    """

    def __init__(self, inputs: list[InputSpec], d: int) -> None:
        super().__init__()
        self.inputs = inputs
        # Encoder token outputs come unstandardised: LayerNorm first. Vectors are standardised already.
        self.embed = nn.ModuleDict({
            _key(i.name): nn.Sequential(nn.LayerNorm(i.dim), nn.Linear(i.dim, d)) if i.kind == "tokens" else nn.Linear(i.dim, d)
            for i in inputs
        })
        self.position = nn.ParameterDict({
            _key(i.name): nn.Parameter(0.02 * torch.randn(i.length if i.kind == "tokens" else 1, d)) for i in inputs
        })

    def forward(self, batch: Batch, modality_index: dict[str, int]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        tokens, valid, owner = [], [], []
        for i in self.inputs:
            x = batch.inputs[i.name]
            x = x.unsqueeze(1) if i.kind == "vector" else x
            ok = batch.mask[:, modality_index[logical_name(i.name)]].unsqueeze(1).expand(x.shape[0], x.shape[1])
            if i.name in batch.token_masks:
                ok = ok & batch.token_masks[i.name]
            tokens.append(self.embed[_key(i.name)](x) + self.position[_key(i.name)])
            valid.append(ok)
            owner += [logical_name(i.name)] * x.shape[1]
        owners = {m: torch.tensor([o == m for o in owner], device=batch.mask.device) for m in dict.fromkeys(owner)}
        return torch.cat(tokens, dim=1), torch.cat(valid, dim=1), owners


class _TokenFusionBase(Backbone):
    """What AlignedFusion and the self-attention baseline share: tokenisation, pooling, heads."""

    def __init__(self, spec: DataSpec, hidden: int, num_fused: int, dropout: float, method: str) -> None:
        super().__init__(spec)
        self.report_input = _attribute_input(spec, method)
        self.report = logical_name(self.report_input.name)
        visual = [i for i in spec.inputs if logical_name(i.name) != self.report]
        if not visual:
            raise ValueError(f"{method}: needs at least one image (or other) input besides the report; "
                             f"got {[i.name for i in spec.inputs]}")
        self.modality_index = {m: k for k, m in enumerate(self.modalities)}
        self.attribute_tokens = AttributeTokens(self.report_input.dim, self.report_input.length, hidden)
        self.visual_tokens = VisualTokens(visual, hidden)
        # F_d (Eq.11) on the concatenation of the pooled token sets.
        self.classifier = nn.Sequential(
            nn.LayerNorm(num_fused * hidden), nn.Linear(num_fused * hidden, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, self.num_classes),
        )
        # Per-modality probes for the backbone contract (CLIMD reads them); trained on detached
        # embeddings so they do not change the method's own training signal.
        self.unimodal_heads = nn.ModuleList([nn.Linear(hidden, self.num_classes) for _ in self.modalities])

    def _report_unknown(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Mentioned attributes [B, A] (token_mask AND report available) and the genuinely unknown ones."""
        name = self.report_input.name
        present = batch.mask[:, self.modality_index[self.report]].unsqueeze(1)
        if name in batch.token_masks:
            present = present & batch.token_masks[name]
        else:
            present = present.expand(-1, self.report_input.length)
        return present, ~present

    def _output(self, r: Tensor, v: Tensor, v_valid: Tensor, owners: dict[str, Tensor], pooled: list[Tensor],
                batch: Batch, extras: dict[str, Tensor]) -> BackboneOutput:
        emb = []
        for m in self.modalities:
            if m == self.report:
                emb.append(r.mean(1))  # every attribute slot: mentioned or reconstructed
            else:
                emb.append(masked_mean(v, v_valid & owners[m]))
        embeddings = torch.stack(emb)
        logits = self.classifier(torch.cat(pooled, dim=-1))
        unimodal = torch.stack([head(e.detach()) for head, e in zip(self.unimodal_heads, embeddings)])
        return BackboneOutput(logits, unimodal, embeddings, batch.mask, extras)

    def _probe_loss(self, out: BackboneOutput, batch: Batch, criterion: Criterion) -> Tensor:
        terms = []
        for k in range(len(self.modalities)):
            rows = out.mask[:, k]
            if rows.any():
                terms.append(criterion(out.unimodal_logits[k][rows], batch.y[rows]))
        return torch.stack(terms).mean() if terms else out.logits.sum() * 0.0


# -------------------------------------------------------------------------------- AlignedFusion
def reconstruction_loss(t_hat: Tensor, tokens: Tensor, present: Tensor, masked: Tensor, embed: nn.Module) -> Tensor:
    """Eq.10 ``l_rec = CE(t_hat_r^i, t_r^i)`` over the masked tokens only.

    Tokens are continuous, so "cross-entropy between tokens" needs a set of classes. Reading
    chosen: for attribute i the classes are the distinct true value tokens of attribute i among
    the batch's mentioned tokens (with a deterministic prompt encoder: its positive and its
    negative value token); the score of class c is ``<t_hat, embed(c)>`` with the model's own input
    embedding (BERT-style tied output embedding). The loss is the mean over masked tokens; tokens
    that were not masked contribute nothing.

    t_hat: [B, A, d] reconstruction head outputs; tokens: [B, A, d_text] true tokens;
    present/masked: [B, A] bool (masked implies present).
    """
    total = t_hat.new_zeros(())
    count = int(masked.sum())
    if count == 0:
        return total
    for a in range(tokens.shape[1]):
        rows = masked[:, a]
        if not rows.any():
            continue
        classes, inverse = torch.unique(tokens[present[:, a], a], dim=0, return_inverse=True)
        target = torch.full((tokens.shape[0],), -1, dtype=torch.long, device=tokens.device)
        target[present[:, a]] = inverse
        logits = t_hat[rows, a] @ embed(classes).T
        total = total + F.cross_entropy(logits, target[rows], reduction="sum")
    return total / count


class AlignedFusion(_TokenFusionBase):
    Config = AlignedFusionConfig

    def __init__(self, spec: DataSpec, config: AlignedFusionConfig = AlignedFusionConfig()) -> None:
        hidden, depth, heads, dropout = config.hidden, config.depth, config.heads, config.dropout
        mask_p, rec_weight = config.mask_p, config.rec_weight
        self.intermediate_token = bool(config.intermediate_token)
        super().__init__(spec, hidden, 3 if self.intermediate_token else 2, dropout, "alignedfusion")
        self.mask_p = float(mask_p)
        self.rec_weight = float(rec_weight)
        # One self-attention block per token set and layer (Eq.7: each set attends separately).
        self.report_blocks = nn.ModuleList([Block(hidden, heads, dropout) for _ in range(depth)])
        self.visual_blocks = nn.ModuleList([Block(hidden, heads, dropout) for _ in range(depth)])
        if self.intermediate_token:
            self.t_int = nn.Parameter(0.02 * torch.randn(hidden))
        # F_rec (Eq.10): reads the fused report tokens, outputs the reconstructed token.
        self.F_rec = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden))
        self.config = config

    @staticmethod
    def merge_intermediate(t_int_r: Tensor, t_int_v: Tensor) -> Tensor:
        """Eq.8: average the report-side and visual-side copies of the intermediate token."""
        return 0.5 * (t_int_r + t_int_v)

    def forward(self, batch: Batch) -> BackboneOutput:
        present, unknown = self._report_unknown(batch)
        masked = torch.zeros_like(present)
        if self.training and self.mask_p > 0:
            masked = present & (torch.rand(present.shape, device=present.device) < self.mask_p)  # Eq.9
        r = self.attribute_tokens(batch.inputs[self.report_input.name], unknown | masked)
        r_valid = torch.ones_like(present)
        v, v_valid, owners = self.visual_tokens(batch, self.modality_index)

        if self.intermediate_token:
            t_int = self.t_int.expand(r.shape[0], 1, -1)
            one = torch.ones_like(r_valid[:, :1])
            for block_r, block_v in zip(self.report_blocks, self.visual_blocks):
                r_sa = block_r(torch.cat([t_int, r], 1), torch.cat([one, r_valid], 1))   # Eq.6-7 t'_r = [t_int; t_r]
                v_sa = block_v(torch.cat([v, t_int], 1), torch.cat([v_valid, one], 1))   # Eq.6-7 t'_v = [t_v; t_int]
                t_int = self.merge_intermediate(r_sa[:, :1], v_sa[:, -1:])              # Eq.8, written back to both
                r, v = r_sa[:, 1:], v_sa[:, :-1]
            pooled = [r.mean(1), masked_mean(v, v_valid), t_int[:, 0]]
        else:  # "w/o IT": direct token-wise attention between the sets
            for block_r, block_v in zip(self.report_blocks, self.visual_blocks):
                r, v = block_r(r, r_valid, v, v_valid), block_v(v, v_valid, r, r_valid)
            pooled = [r.mean(1), masked_mean(v, v_valid)]

        extras = {"t_hat": self.F_rec(r), "masked": masked, "present": present}
        return self._output(r, v, v_valid, owners, pooled, batch, extras)

    def loss(self, out: BackboneOutput, batch: Batch, criterion: Criterion) -> tuple[Tensor, dict[str, Tensor]]:
        l_d = criterion(out.logits, batch.y)
        l_rec = reconstruction_loss(out.extras["t_hat"], batch.inputs[self.report_input.name], out.extras["present"],
                                    out.extras["masked"], self.attribute_tokens.embed)
        probe = self._probe_loss(out, batch, criterion)
        l_all = l_d + self.rec_weight * l_rec   # Sec. 2.6
        parts = {"loss_d": l_d.detach(), "loss_rec": l_rec.detach(), "loss_probe": probe.detach()}
        return l_all + probe, parts


# ------------------------------------------------------------------------- self-attention baseline
class SelfAttentionFusion(_TokenFusionBase):
    """Plain self-attention fusion over the joint token set (the paper's "Self-Attention" row).

    Same tokenisation as AlignedFusion (attribute tokens with ``t_UN`` and position embeddings,
    visual tokens), so the comparison isolates the intermediate-token fusion and the masked
    token reconstruction: here report and visual tokens form one set and every token attends to
    every other; no masking, no reconstruction; ``t_cls = [mean(t_r); mean(t_v)]``.
    """

    Config = SelfAttentionConfig

    def __init__(self, spec: DataSpec, config: SelfAttentionConfig = SelfAttentionConfig()) -> None:
        hidden, depth, heads, dropout = config.hidden, config.depth, config.heads, config.dropout
        super().__init__(spec, hidden, 2, dropout, "selfattn")
        self.blocks = nn.ModuleList([Block(hidden, heads, dropout) for _ in range(depth)])
        self.config = config

    def forward(self, batch: Batch) -> BackboneOutput:
        present, unknown = self._report_unknown(batch)
        r = self.attribute_tokens(batch.inputs[self.report_input.name], unknown)
        v, v_valid, owners = self.visual_tokens(batch, self.modality_index)
        x = torch.cat([r, v], 1)
        valid = torch.cat([torch.ones_like(present), v_valid], 1)
        for block in self.blocks:
            x = block(x, valid)
        r, v = x[:, : r.shape[1]], x[:, r.shape[1]:]
        return self._output(r, v, v_valid, owners, [r.mean(1), masked_mean(v, v_valid)], batch, {})

    def loss(self, out: BackboneOutput, batch: Batch, criterion: Criterion) -> tuple[Tensor, dict[str, Tensor]]:
        l_d = criterion(out.logits, batch.y)
        probe = self._probe_loss(out, batch, criterion)
        return l_d + probe, {"loss_d": l_d.detach(), "loss_probe": probe.detach()}
