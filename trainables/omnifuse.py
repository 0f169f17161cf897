"""OmniFuse (Wu et al., Information Fusion 2025; seeds/001_*.txt): CRA imputation, DWFuse, TLA.

    Eq.1    v_m = e_m(x_m); a missing modality is encoded from a zero input (v_m^miss)
    Eq.2-3  v = concat(v_1, ..., v_M) with v_m^miss in the missing slots
    Eq.4    dz_1 = phi_1(v), dz_k = phi_k(v + sum_{j<k} dz_j)         K residual autoencoders (RAs)
    Eq.5    v'  = v  + sum_k dz_k                                     forward CRA
    Eq.6    v'' = v' + sum_k dz^b_k                                   backward CRA (its own RAs, on v')
    Eq.7    L_forward  = ||v' - v_full||^2                            Eq.8  L_backward = ||v - v''||^2
    Eq.9    p_m = g_m(v'_m)                                           per-modality classifiers
    Eq.10   omega_m = [prod_{n != m} (1 - p_n)]^(beta / (M-1))        p_n: probability of the true class
    Eq.11   o = g_rc(concat(s_1, ..., s_K))                           s_k: latent of the k-th forward RA
    Eq.12-14 L_ens = sum_m omega_m CE(p_m, y), L_rc = CE(o, y), L_DWFuse = L_ens + alpha L_rc
    Eq.15   delta_lazy = argmax_delta sum_i D(yhat_i^delta, y_i) over the 2^M - 1 combinations
    Eq.16-17 L_TLA = CE(yhat[Mask], y[Mask])
    Eq.18   L = L_forward + lambda1 L_backward + lambda2 L_DWFuse + lambda3 L_TLA

Switches (paper Table 4) and how this implementation reads them:

- ``imp_forward``: the forward CRA is supervised by L_forward (Eq.7). ``imp_backward``: the
  backward CRA and L_backward (Eq.8). The forward CRA runs whenever either is on (Table 4 row (e)
  trains it through the cycle and classification losses only); with both off there is no CRA
  and v' = v. While the CRA runs, training simulates missing patterns: with probability
  ``modality_dropout`` (default 1, the paper's scheme: every sample) a sample observes a uniformly
  drawn non-empty subset of its available modalities (all 2^k - 1 patterns of Table 1, the
  complete one included); the rest are dropped to v^miss. Inference runs the forward CRA only.
- ``dwfuse``: L_DWFuse (Eq.12-14). Off: the classification term is CE(o, y) alone and the
  per-modality classifiers become probes trained on detached embeddings (they only serve
  CLIMD's p^m and never change the model). Without a CRA, the joint classifier g_rc reads the
  concatenated embeddings v instead of the RA latents. All switches off = concatenation
  baseline: encoders, concat, classifier, (lambda2-scaled) cross-entropy.
- ``tla``: after each epoch (``end_epoch``, eval mode, forward CRA) every combination delta is
  scored on the training samples that have all of delta's modalities, predicting from delta's
  modalities only; D is the L1 distance ||softmax(o) - onehot(y)||_1 and the sum of Eq.15 is taken
  as a mean over those samples (combinations can have different numbers of eligible samples).
  ``tla_mask`` chooses the reading of Eq.16: ``combination`` (default, literal): Mask(s) is true
  for the samples whose modality combination in this mini-batch (after simulated dropping)
  equals delta_lazy, and yhat is the model's joint prediction; ``restrict``: every sample that
  has delta_lazy's modalities is predicted a second time from delta_lazy's modalities alone and
  all of them enter L_TLA. Note that on complete data without a CRA (no simulated dropping) the
  ``combination`` reading selects no sample unless delta_lazy is the full set. L_TLA is 0 until
  the first epoch has ended.

Other documented choices: ||.||^2 of Eq.7-8 is the mean squared error over the embedding entries
of the slots it concerns (L_forward: slots whose modality the sample really has, as v_full is
unknown elsewhere; L_backward: slots observed in this pass); both targets are detached. omega is
a constant weight (no gradient). The fused prediction (``logits``) is the joint classifier o.
Each RA is Linear(M d, ``ra_latent``) + ReLU (the latent s_k) then Linear(``ra_latent``, M d).
The paper leaves lr and epochs open: the engine's defaults apply to a bare config; the OmniFuse spaces
use a learning rate of our own calibration (``spaces/omnifuse.py``, ``CALIBRATED_LR``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from trainables.backbone import Backbone, BackboneOutput, Batch, Criterion, DataSpec, TensorData
from trainables.baseline import check_rate, drop_modalities, masked_criterion, mlp, modality_encoders


@dataclass(frozen=True)
class OmniFuseConfig:
    """OmniFuse's hyperparameters. Paper defaults (Sec. 4.3): K = 5 RAs, alpha = 0.1, beta = 0.5,
    lambda1..3 = 1, 10, 0.5, all components on; the paper gives no learning rate or epochs (the
    engine's defaults apply)."""

    hidden: int = 128                                   # encoder width d (our choice)
    dropout: float = 0.1                                # dropout of every MLP (our choice)
    K: int = 5                                          # residual autoencoders per CRA (Eq.4; paper 5)
    ra_latent: int = 64                                 # latent width of each RA, s_k (our choice)
    alpha: float = 0.1                                  # weight of L_rc in L_DWFuse (Eq.14; paper 0.1)
    beta: float = 0.5                                   # suppression strength of omega (Eq.10; paper 0.5)
    lambda1: float = 1.0                                # weight of L_backward (Eq.18; paper 1)
    lambda2: float = 10.0                               # weight of L_DWFuse (Eq.18; paper 10)
    lambda3: float = 0.5                                # weight of L_TLA (Eq.18; paper 0.5)
    dwfuse: bool = True                                 # Table 4 switch: L_DWFuse (Eq.12-14)
    tla: bool = True                                    # Table 4 switch: L_TLA (Eq.15-17)
    imp_forward: bool = True                            # Table 4 switch: L_forward (Eq.7)
    imp_backward: bool = True                           # Table 4 switch: backward CRA, L_backward (Eq.8)
    tla_mask: Literal["combination", "restrict"] = "combination"  # reading of Eq.16's Mask (module docstring)
    modality_dropout: float = 1.0
    """Probability that a training sample's modalities are replaced by a uniformly drawn non-empty
    subset of its available ones while a CRA runs (:func:`trainables.baseline.drop_modalities`):
    1 = the paper's scheme (every sample, every batch; about 43% of the slots for 3 modalities),
    0 = no training-time drop."""

    def __post_init__(self) -> None:
        check_rate("modality_dropout", self.modality_dropout)
        if self.K < 1:
            raise ValueError(f"config 'K': needs at least one residual autoencoder, got {self.K}")




def dwfuse_weights(p_true, beta: float):
    """Eq.10: omega_m = [prod_{n != m} (1 - p_n)]^(beta / (M-1)). p_true [N, M] -> omega [N, M].

    Accepts a tensor (returns a tensor, no gradient) or an array. With M = 1 the product is empty
    and omega = 1."""
    as_numpy = not isinstance(p_true, Tensor)
    p = torch.as_tensor(np.asarray(p_true, dtype=np.float64)) if as_numpy else p_true.detach()
    M = p.shape[1]
    if M == 1:
        omega = torch.ones_like(p)
    else:
        q = 1.0 - p
        others = torch.stack([torch.cat([q[:, :m], q[:, m + 1:]], dim=1).prod(dim=1) for m in range(M)], dim=1)
        omega = others.clamp_min(0.0) ** (beta / (M - 1))
    return omega.numpy() if as_numpy else omega


class ResidualAutoencoder(nn.Module):
    """phi_k: returns (dz_k, s_k)."""

    def __init__(self, width: int, latent: int) -> None:
        super().__init__()
        self.encode = nn.Sequential(nn.Linear(width, latent), nn.ReLU())
        self.decode = nn.Linear(latent, width)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = self.encode(x)
        return self.decode(s), s


class CascadeResidualAutoencoder(nn.Module):
    """Eq.4-6: x -> x + sum_k dz_k, with dz_k computed from x plus the earlier residuals."""

    def __init__(self, width: int, latent: int, K: int) -> None:
        super().__init__()
        self.ras = nn.ModuleList(ResidualAutoencoder(width, latent) for _ in range(K))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        acc = torch.zeros_like(x)
        latents = []
        for ra in self.ras:
            dz, s = ra(x + acc)  # Eq.4 (acc = 0 for k = 1)
            acc = acc + dz
            latents.append(s)
        return x + acc, latents  # Eq.5 / Eq.6


def all_combinations(M: int) -> list[Tensor]:
    """The 2^M - 1 non-empty modality combinations as bool [M] masks, by size then order."""
    return [torch.tensor([m in c for m in range(M)]) for k in range(1, M + 1) for c in itertools.combinations(range(M), k)]


def _mined_from_lazy(module: OmniFuse, incompatible_keys) -> None:
    """After ``load_state_dict``: delta_lazy has been mined iff it selects a modality."""
    module.mined.fill_(bool(module.lazy.any()))


class OmniFuse(Backbone):
    Config = OmniFuseConfig

    def __init__(self, spec: DataSpec, config: OmniFuseConfig = OmniFuseConfig()) -> None:
        super().__init__(spec)
        self.config = config
        c = config
        hidden, dropout, K, ra_latent = c.hidden, c.dropout, c.K, c.ra_latent
        alpha, beta, lambda1, lambda2, lambda3 = c.alpha, c.beta, c.lambda1, c.lambda2, c.lambda3
        dwfuse, tla, imp_forward, imp_backward, tla_mask = c.dwfuse, c.tla, c.imp_forward, c.imp_backward, c.tla_mask
        M, C = len(self.modalities), self.num_classes
        self.d = hidden
        self.alpha, self.beta = alpha, beta
        self.lambda1, self.lambda2, self.lambda3 = lambda1, lambda2, lambda3
        self.dwfuse, self.tla, self.imp_forward, self.imp_backward = dwfuse, tla, imp_forward, imp_backward
        self.tla_mask = tla_mask
        self.use_cra = imp_forward or imp_backward
        self.modality_dropout = c.modality_dropout

        self.encoders = modality_encoders(spec, hidden, hidden, dropout)                    # e_m, Eq.1
        self.forward_cra = CascadeResidualAutoencoder(M * hidden, ra_latent, K) if self.use_cra else None
        self.backward_cra = CascadeResidualAutoencoder(M * hidden, ra_latent, K) if imp_backward else None
        self.unimodal_classifiers = nn.ModuleList(mlp(hidden, hidden, C, dropout) for _ in range(M))  # g_m, Eq.9
        self.joint_classifier = mlp(K * ra_latent if self.use_cra else M * hidden, hidden, C, dropout)  # g_rc, Eq.11
        self.register_buffer("lazy", torch.zeros(M, dtype=torch.bool))   # delta_lazy (all False = not mined yet)
        # whether delta_lazy has been mined: read by forward's control flow, so a bool shared by the
        # folds of a stacked run (trainables.batched passes a buffer equal in every member once);
        # not in the state_dict (derived from lazy on loading, so checkpoints keep their format)
        self.register_buffer("mined", torch.zeros((), dtype=torch.bool), persistent=False)
        self.register_load_state_dict_post_hook(_mined_from_lazy)

    # ------------------------------------------------------------------ forward
    def simulate_missing(self, available: Tensor) -> Tensor:
        """With probability ``modality_dropout``, a uniformly drawn non-empty subset of a sample's
        available modalities (:func:`trainables.baseline.drop_modalities`)."""
        return drop_modalities(available, self.modality_dropout)

    def embed(self, batch: Batch, observed: Tensor) -> Tensor:
        """Eq.1-3: the triplet v [B, M*d] with v^miss (encoder of a zero input) in unobserved slots."""
        return torch.cat([enc(batch, observed[:, m]) for m, enc in enumerate(self.encoders)], dim=-1)

    def fuse(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """Forward CRA (Eq.4-5) and joint classifier (Eq.11): (v', o)."""
        if self.forward_cra is None:
            return v, self.joint_classifier(v)
        v_prime, latents = self.forward_cra(v)
        return v_prime, self.joint_classifier(torch.cat(latents, dim=-1))

    def forward(self, batch: Batch) -> BackboneOutput:
        available = batch.mask
        simulate = self.training and self.use_cra
        observed = self.simulate_missing(available) if simulate else available
        v = self.embed(batch, observed)
        v_prime, o = self.fuse(v)
        B, M = available.shape
        per_modality = v_prime.view(B, M, self.d).transpose(0, 1)                           # [M, B, d]
        heads_in = per_modality if self.dwfuse else per_modality.detach()
        unimodal = torch.stack([g(h) for g, h in zip(self.unimodal_classifiers, heads_in)])  # Eq.9
        extras: dict[str, Tensor] = {}
        if self.training:
            extras["available"] = available
            if self.imp_forward:
                with torch.no_grad():
                    extras["v_full"] = self.embed(batch, available)                         # target of Eq.7
            if self.imp_backward:
                extras["v"] = v
                extras["v_backward"] = self.backward_cra(v_prime)[0]                         # Eq.6
            if self.tla and bool(self.mined):
                if self.tla_mask == "combination":
                    extras["tla_logits"] = o
                    extras["tla_select"] = (observed == self.lazy).all(dim=1)
                else:
                    restricted = available & self.lazy
                    extras["tla_logits"] = self.fuse(self.embed(batch, restricted))[1]
                    extras["tla_select"] = (restricted == self.lazy).all(dim=1)
        return BackboneOutput(logits=o, unimodal_logits=unimodal, embeddings=per_modality, mask=observed, extras=extras)

    # ------------------------------------------------------------------ loss (Eq.7-18)
    def _slot_mse(self, a: Tensor, b: Tensor, slots: Tensor) -> Tensor:
        w = slots.repeat_interleave(self.d, dim=1).to(a.dtype)                              # [B, M*d]
        return (((a - b) ** 2) * w).sum() / w.sum().clamp_min(1.0)

    def loss(self, out: BackboneOutput, batch: Batch, criterion: Criterion) -> tuple[Tensor, dict[str, Tensor]]:
        y, ex = batch.y, out.extras
        B, M = out.mask.shape
        zero = out.logits.sum() * 0.0
        parts: dict[str, Tensor] = {}
        v_prime = out.embeddings.transpose(0, 1).reshape(B, M * self.d)
        l_fw = self._slot_mse(v_prime, ex["v_full"], ex["available"]) if self.imp_forward else zero       # Eq.7
        l_bw = self._slot_mse(ex["v_backward"], ex["v"].detach(), out.mask) if self.imp_backward else zero  # Eq.8
        l_rc = criterion(out.logits, y)                                                                   # Eq.13
        if self.dwfuse:
            per = torch.stack([criterion(lg, y, reduction="none") for lg in out.unimodal_logits], dim=1)  # [B, M]
            p_true = torch.softmax(out.unimodal_logits, -1).gather(2, y[None, :, None].expand(M, B, 1))[..., 0].T
            omega = dwfuse_weights(p_true, self.beta)                                                     # Eq.10
            present = torch.ones_like(out.mask) if self.use_cra else out.mask
            l_ens = (omega * per * present).sum(dim=1).mean()                                             # Eq.12
            l_dw = l_ens + self.alpha * l_rc                                                              # Eq.14
            parts["loss_ens"] = l_ens
        else:
            l_dw = l_rc
            parts["loss_probe"] = sum(masked_criterion(criterion, lg, y, out.mask[:, m])
                                      for m, lg in enumerate(out.unimodal_logits))
        l_tla = masked_criterion(criterion, ex["tla_logits"], y, ex["tla_select"]) if "tla_logits" in ex else zero  # Eq.17
        total = l_fw + self.lambda1 * l_bw + self.lambda2 * l_dw + self.lambda3 * l_tla                    # Eq.18
        if "loss_probe" in parts:
            total = total + parts["loss_probe"]
        parts.update(loss_forward=l_fw, loss_backward=l_bw, loss_rc=l_rc, loss_tla=l_tla)
        return total, {k: v.detach() for k, v in parts.items()}

    # ------------------------------------------------------------------ TLA mining (Eq.15)
    def set_lazy(self, delta: Tensor) -> None:
        """delta_lazy := ``delta`` (bool [M]); L_TLA is on from the next training step."""
        self.lazy.copy_(delta)
        self.mined.fill_(True)

    @property
    def needs_epoch_statistics(self) -> bool:
        return self.tla

    def epoch_statistics(self, batch: Batch) -> dict[str, Tensor]:
        """Eq.15's terms per sample i and combination delta ([B, 2^M - 1], :func:`all_combinations`
        order), 0 where i lacks one of delta's modalities: ``tla_distance`` ||softmax(o_i) - onehot(y_i)||_1
        with o_i predicted from delta's modalities alone, ``tla_count`` 1."""
        onehot = torch.nn.functional.one_hot(batch.y, self.num_classes).to(torch.float32)
        distance, count = [], []
        for delta in all_combinations(len(self.modalities)):
            restricted = batch.mask & delta.to(batch.mask.device)
            eligible = (restricted == delta.to(batch.mask.device)).all(dim=1)
            probs = torch.softmax(self.fuse(self.embed(batch, restricted))[1], dim=-1)
            distance.append((probs - onehot).abs().sum(dim=1) * eligible)
            count.append(eligible.to(torch.float32))
        return {"tla_distance": torch.stack(distance, dim=1), "tla_count": torch.stack(count, dim=1)}

    def combination_distances(self, train: TensorData, statistics: dict[str, Tensor] | None = None
                              ) -> list[tuple[Tensor, float]]:
        """Mean L1 distance ||softmax(o) - onehot(y)||_1 of each combination over the samples that have
        it (combinations no sample has are left out)."""
        stats = self.collect_epoch_statistics(train) if statistics is None else statistics
        distance, count = stats["tla_distance"].tolist(), stats["tla_count"].tolist()
        deltas = all_combinations(len(self.modalities))
        return [(delta.to(train.mask.device), d / c) for delta, d, c in zip(deltas, distance, count) if c]

    def end_epoch(self, train: TensorData, criterion: Criterion, statistics: dict[str, Tensor] | None = None
                  ) -> dict[str, float]:
        if not self.tla:
            return {}
        scored = self.combination_distances(train, statistics)
        delta, dist = max(scored, key=lambda r: r[1])                                     # Eq.15 argmax
        self.set_lazy(delta)
        code = sum(1 << m for m in range(len(delta)) if bool(delta[m]))
        return {"tla_lazy_combination": float(code), "tla_lazy_distance": dist}
