"""Resampling baselines of CLIMD's Table 2 (imbalanced-learn), applied once to a fold's training part.

``RESAMPLERS`` maps the engine's ``imbalance`` option to ``(data, config, seed) -> data``:

- ``undersample``: random undersampling of every class to the minority count
  (``RandomUnderSampler``); the kept samples are the original ones.
- ``smote``: SMOTE (``k_neighbors`` = config ``smote_k``, lowered to minority size - 1) on the
  concatenation of all vector modalities *and* their availability bits. A synthetic sample's
  modality is available when its interpolated availability bit is >= 0.5; otherwise its values
  are zeroed, as for any missing modality. Only vector inputs can be interpolated: a dataset with
  token modalities raises :class:`DataError`.
- ``vae``: VAE oversampling (CLIMD §4.3, Table 2: "generating new samples by VAE to oversample the
  minority classes"). One small VAE per class is fitted on that class's rows of the fold's
  training part (already standardised with the training part's statistics; nothing of the
  validation part reaches it), and every minority class is sampled up to the majority count, as
  ``smote`` does. The paper gives no architecture or training details; the choices made here are
  :class:`VAEConfig` (its fields are the config keys ``vae_*``) and:

  * the VAE sees the concatenation of all vector modalities and their availability bits;
  * ELBO (Kingma & Welling, Eq.10) with a unit-variance Gaussian decoder for the values of the
    *available* modalities (a missing modality's zeros are not reconstructed) and a Bernoulli
    decoder for the availability bits, :func:`vae_loss`;
  * a synthetic sample is the decoder's mean at ``z ~ N(0, I)``; its availability bits are drawn
    from the decoder's Bernoulli probabilities (at least one modality: the most probable one if the
    draw leaves none), and an unavailable modality's values are zeroed, as for any missing one.

  Vector inputs only, like ``smote``; seeded (the VAE's initialisation, its mini-batches and the
  draws all come from ``seed`` and the class index, in a private torch RNG state).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from trainables.data.dataset import Modality, MultimodalDataset
from trainables.data.errors import DataError

Resampler = Callable[[MultimodalDataset, dict, int], MultimodalDataset]


def undersample(data: MultimodalDataset, config: dict, seed: int) -> MultimodalDataset:
    from imblearn.under_sampling import RandomUnderSampler  # imbalanced-learn only where it resamples

    sampler = RandomUnderSampler(random_state=seed)
    sampler.fit_resample(np.arange(len(data))[:, None], data.labels)
    return data.take(np.sort(sampler.sample_indices_))


def _vector_only(data: MultimodalDataset, option: str) -> None:
    for m in data.modalities.values():
        if m.kind != "vector":
            raise DataError(f"config 'imbalance': {option}", f"needs vector inputs only, but modality {m.name!r} is {m.kind}")


def _with_synthetic(data: MultimodalDataset, values: list[np.ndarray], masks: list[np.ndarray], labels: np.ndarray,
                    prefix: str) -> MultimodalDataset:
    """``data`` followed by synthetic rows: per modality (in ``data.modalities`` order) their values
    and availability; an unavailable modality's values are zeroed."""
    modalities: dict[str, Modality] = {}
    for m, v, mask in zip(data.modalities.values(), values, masks):
        v = v.astype(np.float32, copy=True)
        v[~mask] = 0.0
        modalities[m.name] = Modality(m.name, m.kind, np.concatenate([m.values, v]), np.concatenate([m.mask, mask]),
                                      m.feature_names)
    return MultimodalDataset(
        name=data.name,
        ids=np.concatenate([data.ids, [f"{prefix}-{i}" for i in range(len(labels))]]),
        labels=np.concatenate([data.labels, labels]).astype(data.labels.dtype),
        class_names=list(data.class_names),
        modalities=modalities,
    )


def smote(data: MultimodalDataset, config: dict, seed: int) -> MultimodalDataset:
    _vector_only(data, "smote")
    counts = data.class_counts()
    k = min(int(config.get("smote_k", 5)), int(counts[counts > 0].min()) - 1)
    if k < 1:
        raise DataError("config 'imbalance': smote", "the smallest class needs at least 2 samples")
    mods = list(data.modalities.values())
    widths = [m.values.shape[1] for m in mods]
    x = np.concatenate([m.values for m in mods] + [np.stack([m.mask for m in mods], 1).astype(np.float32)], axis=1)
    from imblearn.over_sampling import SMOTE  # imbalanced-learn only where it resamples

    x_new, y_new = SMOTE(k_neighbors=k, random_state=seed).fit_resample(x, data.labels)
    n = len(data)  # imbalanced-learn appends the synthetic rows after the originals
    bounds = np.cumsum([0, *widths])
    values = [x_new[n:, bounds[j]:bounds[j + 1]] for j in range(len(mods))]
    masks = [x_new[n:, bounds[-1] + j] >= 0.5 for j in range(len(mods))]
    return _with_synthetic(data, values, masks, y_new[n:], "smote")


# ------------------------------------------------------------------------------------- VAE
@dataclass(frozen=True)
class VAEConfig:
    """The VAE oversampler's hyperparameters (config keys ``vae_<field>``); CLIMD gives none, so
    these are ours: a VAE small enough for classes of tens of samples."""

    latent: int = 8
    """dimension of z"""
    hidden: int = 64
    """width of the one hidden layer of the encoder and of the decoder"""
    steps: int = 1000
    """Adam steps (mini-batches drawn without replacement within a pass over the class's rows), the
    same for every class: a class of tens of samples gets as many updates as a large one"""
    batch_size: int = 32
    lr: float = 3e-3
    """Adam learning rate"""
    beta: float = 1.0
    """weight of the KL term (1 = the ELBO)"""

    @classmethod
    def from_config(cls, config: dict) -> VAEConfig:
        values = {}
        for f in fields(cls):
            key = f"vae_{f.name}"
            if key not in config:
                continue
            kind = int if f.type in (int, "int") else float
            try:
                v = kind(config[key])
            except (TypeError, ValueError):
                raise DataError(f"config {key!r}", f"expected a number, got {config[key]!r}") from None
            if v <= 0 and not (f.name == "beta" and v == 0):
                raise DataError(f"config {key!r}", f"expected a positive number, got {config[key]!r}")
            values[f.name] = v
        return cls(**values)


class VAE(nn.Module):
    """x -> (mu, log sigma^2) of q(z|x) -> z -> (value means, availability logits)."""

    def __init__(self, n_values: int, n_bits: int, cfg: VAEConfig) -> None:
        super().__init__()
        self.n_values = n_values
        self.encoder = nn.Sequential(nn.Linear(n_values + n_bits, cfg.hidden), nn.ReLU())
        self.mu = nn.Linear(cfg.hidden, cfg.latent)
        self.logvar = nn.Linear(cfg.hidden, cfg.latent)
        self.decoder = nn.Sequential(nn.Linear(cfg.latent, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, n_values + n_bits))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.decoder(z)
        return out[:, : self.n_values], out[:, self.n_values:]


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) per sample = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def reconstruction(x: torch.Tensor, bits: torch.Tensor, value_mask: torch.Tensor, mean: torch.Tensor,
                   logits: torch.Tensor) -> torch.Tensor:
    """-log p(x, a | z) per sample, up to the Gaussian's constant: 1/2 sum over the available
    modalities' features of (x - mean)^2 (unit variance) plus the Bernoulli cross-entropy of the
    availability bits a."""
    gauss = 0.5 * ((x - mean).pow(2) * value_mask).sum(-1)
    bern = nn.functional.binary_cross_entropy_with_logits(logits, bits, reduction="none").sum(-1)
    return gauss + bern


def vae_loss(model: VAE, x: torch.Tensor, bits: torch.Tensor, value_mask: torch.Tensor, eps: torch.Tensor,
             beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Negative ELBO (mean over the batch) with the reparameterisation z = mu + sigma * eps, and
    its two terms (reconstruction, KL), each a batch mean."""
    mu, logvar = model.encode(torch.cat([x, bits], -1))
    z = mu + (0.5 * logvar).exp() * eps
    mean, logits = model.decode(z)
    rec = reconstruction(x, bits, value_mask, mean, logits).mean()
    kl = gaussian_kl(mu, logvar).mean()
    return rec + beta * kl, rec, kl


def _class_seed(seed: int, label: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(label)]).generate_state(1)[0])


def fit_and_sample(x: np.ndarray, bits: np.ndarray, value_mask: np.ndarray, n_new: int, cfg: VAEConfig,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit one VAE on the rows (values ``x``, availability ``bits``, ``value_mask`` = each value's
    modality availability) and draw ``n_new`` samples: (value means, availability bits)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tx, tb, tm = (torch.as_tensor(a, dtype=torch.float32) for a in (x, bits, value_mask))
        model = VAE(x.shape[1], bits.shape[1], cfg)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        n, step = len(x), 0
        while step < cfg.steps:
            order = torch.randperm(n)
            for start in range(0, n, cfg.batch_size):
                if step == cfg.steps:
                    break
                idx = order[start:start + cfg.batch_size]
                loss, _, _ = vae_loss(model, tx[idx], tb[idx], tm[idx], torch.randn(len(idx), cfg.latent), cfg.beta)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
        with torch.no_grad():
            mean, logits = model.decode(torch.randn(n_new, cfg.latent))
            p = torch.sigmoid(logits).numpy()
    draws = np.random.default_rng(seed).random(p.shape) < p
    none = ~draws.any(1)
    draws[none, p[none].argmax(1)] = True
    return mean.numpy(), draws


def vae_oversample(data: MultimodalDataset, config: dict, seed: int) -> MultimodalDataset:
    """Every class with fewer samples than the largest sampled up to it by its own VAE."""
    _vector_only(data, "vae")
    cfg = VAEConfig.from_config(config)
    mods = list(data.modalities.values())
    widths = [m.values.shape[1] for m in mods]
    bounds = np.cumsum([0, *widths])
    x = np.concatenate([m.values for m in mods], axis=1).astype(np.float32)
    bits = data.availability().astype(np.float32)
    value_mask = np.repeat(bits, widths, axis=1)
    counts = data.class_counts()
    values: list[list[np.ndarray]] = [[] for _ in mods]
    masks: list[list[np.ndarray]] = [[] for _ in mods]
    labels = []
    for c in np.flatnonzero((counts > 0) & (counts < counts.max())):
        rows = data.labels == c
        n_new = int(counts.max() - counts[c])
        mean, draws = fit_and_sample(x[rows], bits[rows], value_mask[rows], n_new, cfg, _class_seed(seed, c))
        for j in range(len(mods)):
            values[j].append(mean[:, bounds[j]:bounds[j + 1]])
            masks[j].append(draws[:, j])
        labels.append(np.full(n_new, c))
    if not labels:
        return data
    return _with_synthetic(data, [np.concatenate(v) for v in values], [np.concatenate(m) for m in masks],
                           np.concatenate(labels), "vae")


RESAMPLERS: dict[str, Resampler] = {"undersample": undersample, "smote": smote, "vae": vae_oversample}
