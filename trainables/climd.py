"""CLIMD: curriculum learning for imbalanced multimodal diagnosis (Han et al.; seeds/000_*.txt).

CLIMD is not a backbone: it decides which training samples each epoch sees. It wraps any
:class:`trainables.backbone.Backbone` through the contract (unimodal probabilities p^m and
per-modality embeddings F(x^m)), and the training engine enables it with config keys.

Multimodal Curriculum Measurer (MCM), :func:`difficulty`:
    Eq.1  psi_i^m = sigmoid( (1/C) sum_c y_ic log p_ic^m )          intra-modal confidence
    Eq.2  s_mm'   = cos(F(x^m), F(x^m'))
    Eq.3  phi_i   = 1 - 1/(M(M-1)) sum_{m != m'} s_mm'              inter-modal complementarity
    Eq.4  r_i     = phi_i + (1/M) sum_m psi_i^m

Training Sample Scheduler (TSS), :func:`alpha_hat`, :func:`class_distribution`, :func:`epoch_quota`:
    Eq.6  alpha_hat = (1/gamma) (1 + C / (sum_c ln n^(c) - C ln n_min)) = alpha(T)
          alpha(t)  = 1 + (alpha(T) - 1) (t-1)/(T-1)
    Eq.7  q_t(c) = (1 - (t-1)/(T-1)) / C + ((t-1)/(T-1)) c^(-gamma alpha(t)) / sum_i i^(-gamma alpha(t))
          S_t = t/T * N samples in epoch t, s_t^(c) = q_t(c) S_t from class c, easiest first.

Documented choices (the paper leaves them open):
- ``difficulty_order``: which end of r is easy. ``desc`` (default): a high r is easy, because r
  grows with the confidence psi (a sample the model already predicts well) — the paper's
  "prioritizes stable samples". ``asc``: a low r is easy (r read literally as a difficulty).
- Missing modalities are excluded: the mean over m in Eq.4 runs over the sample's available
  modalities and Eq.3 over its ordered pairs of available modalities; with fewer than two
  available modalities the empty sum is 0, so phi_i = 1.
- Class ranks: rank 1 = most frequent class; ties keep the order of ``class_counts``. Classes
  with no sample get q = 0 and the fit runs over the others. When all counts are equal the MLE
  denominator is 0 and alpha_hat = inf; the power-law term then is its limit, all mass on rank 1.
  For T = 1 the single epoch uses the final distribution ((t-1)/(T-1) := 1).
- Quotas: S_t is rounded to the nearest integer (at least 1) and split over the classes by the
  largest-remainder method, so quotas sum to S_t; then each is capped at the class size.
  ``shortfall`` says what happens to the samples a capped class cannot give:
  ``redistribute`` (default) hands them to the classes that still have samples, in proportion
  to q_t, until S_t is met or the data run out; ``drop`` trains the epoch on fewer samples.
- The other curricula of the paper's Table 4 (its "schedulers") rank all samples globally by r:
  ``baby_step`` (Bengio et al. 2009: ``n_buckets`` difficulty buckets added cumulatively, one
  more every T/n_buckets epochs), ``one_pass`` (the same buckets visited one at a time),
  ``linear`` / ``root`` (Platanios et al. 2019 competence c(t) = min(1, t(1-c0)/T_g + c0) and
  min(1, sqrt(t(1-c0^2)/T_g + c0^2)), epoch t trains on the easiest c(t) N samples), ``geom``
  (geometric progression c(t) = min(1, c0^(1 - t/T_g))), and ``none`` (every sample every epoch).
  T_g = ``competence_epochs`` (default: the curriculum length).

Paper reading of the options the paper leaves open (defaults of :class:`CurriculumConfig`):
- ``warmup_epochs`` = 0: the paper's curriculum starts at epoch 1 (D_1 is class-uniform, "t in
  [0, T]"); it mentions no warm-up. ``warmup_epochs`` = w trains w epochs on every sample first and
  runs the curriculum over the remaining T - w epochs.
- ``difficulty_every`` = 1: MCM reads the model being trained (p^m and F(x^m)), and the paper does
  not say when; re-measuring every epoch lets the ranking follow the model (MCM's first measure,
  at curriculum epoch 1, is of the model as warm-up left it).
- ``competence_epochs`` = 0, read as T_g = the curriculum length: Platanios et al.'s T_g is the
  time to full competence, and the paper's Table 4 runs those curricula within its T = 100 epochs.
- Refused: ``difficulty_every`` = 0 (r measured once) with ``warmup_epochs`` = 0, whose whole
  curriculum would be ordered by an untrained model's noise (one-line error; the CLIMD spaces
  declare it forbidden, so ``Space.validate`` and the grid leave it out).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from trainables.config import choices, from_config

UNTRAINED_ONLY = ("config 'difficulty_every' = 0 (difficulty measured once) needs 'warmup_epochs' > 0: "
                  "otherwise the whole curriculum is ordered by an untrained model's difficulty")
"""The refused combination (see "Paper reading" in the module docstring)."""


@dataclass(frozen=True)
class CurriculumConfig:
    """Which samples each epoch trains on: CLIMD's curriculum, a Table 4 baseline, or none."""

    curriculum: Literal["none", "climd", "baby_step", "one_pass", "linear", "root", "geom"] = "none"
    """``none`` (every sample, shuffled; the engine's default) | ``climd`` (TSS, Eq.6-7) | a Table 4 baseline."""
    measurer: Literal["intra", "inter", "both"] = "both"            # MCM terms: Eq.4, or Eq.1 / Eq.3 alone
    gamma: float = 0.3                                               # TSS smoothing gamma (Eq.6-7; paper 0.3)
    difficulty_order: Literal["desc", "asc"] = "desc"                # which end of r is easy (module docstring)
    difficulty_every: int = 1                                        # re-measure r every k curriculum epochs; 0 = once
    warmup_epochs: int = 0                                           # epochs on all samples before the curriculum
    shortfall: Literal["redistribute", "drop"] = "redistribute"      # TSS quota a capped class cannot fill
    n_buckets: int = 10                                              # buckets of baby_step / one_pass
    c0: float = 0.01                                                 # initial competence of linear / root / geom
    competence_epochs: int = 0                                       # T_g of linear / root / geom; 0 = curriculum length

    def __post_init__(self) -> None:
        for key in ("warmup_epochs", "difficulty_every", "competence_epochs"):
            if getattr(self, key) < 0:
                raise ValueError(f"config {key!r} must be >= 0, got {getattr(self, key)}")
        if self.active and self.difficulty_every == 0 and self.warmup_epochs == 0:
            raise ValueError(UNTRAINED_ONLY)

    @property
    def active(self) -> bool:
        return self.curriculum != "none"


CURRICULUM_NAMES = choices(CurriculumConfig, "curriculum")
"""``none`` and the curricula of :data:`CURRICULA` (below; ``tests/test_climd.py`` checks they agree)."""
MEASURERS = choices(CurriculumConfig, "measurer")
ORDERS = choices(CurriculumConfig, "difficulty_order")
SHORTFALLS = choices(CurriculumConfig, "shortfall")


# --------------------------------------------------------------------------- MCM (Eq.1-4)
def difficulty(probs: np.ndarray, labels: np.ndarray, features: np.ndarray, *,
               mask: np.ndarray | None = None, measurer: str = "both") -> np.ndarray:
    """Difficulty score r_i of Eq.4 (or one of its two terms for the Table 4 ablations).

    probs [M, N, C] unimodal class probabilities, labels [N], features [M, N, d] modality
    embeddings F(x^m), mask [N, M] availability (None = all available). ``measurer``: ``both``
    (Eq.4), ``intra`` (mean psi only), ``inter`` (phi only). Returns r [N].
    """
    if measurer not in MEASURERS:
        raise ValueError(f"measurer must be one of {MEASURERS}, got {measurer!r}")
    probs = np.asarray(probs, dtype=np.float64)
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    M, N, C = probs.shape
    avail = np.ones((N, M), bool) if mask is None else np.asarray(mask, bool)
    a = avail.T.astype(np.float64)                                   # [M, N]
    n_avail = a.sum(axis=0)
    r = np.zeros(N)
    if measurer in ("intra", "both"):
        p_true = np.take_along_axis(probs, labels[None, :, None], axis=2)[..., 0]  # [M, N]
        psi = 1.0 / (1.0 + np.exp(-np.log(np.clip(p_true, 1e-12, 1.0)) / C))      # Eq.1 (y one-hot)
        r += (psi * a).sum(axis=0) / np.maximum(n_avail, 1)                          # Eq.4 mean over m
    if measurer in ("inter", "both"):
        unit = features / np.maximum(np.linalg.norm(features, axis=2, keepdims=True), 1e-12)
        s = np.einsum("mnd,knd->nmk", unit, unit)                   # Eq.2 s_mm' per sample [N, M, M]
        pair = avail[:, :, None] & avail[:, None, :] & ~np.eye(M, dtype=bool)[None]
        n_pairs = pair.sum(axis=(1, 2))
        phi = 1.0 - (s * pair).sum(axis=(1, 2)) / np.maximum(n_pairs, 1)           # Eq.3
        r += phi
    return r


# --------------------------------------------------------------------------- TSS (Eq.6-7)
def alpha_hat(class_counts, gamma: float) -> float:
    """Eq.6: MLE of the power-law exponent, alpha(T). Counts of absent classes (0) are ignored."""
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    n = np.asarray(class_counts, dtype=np.float64)
    n = n[n > 0]
    if len(n) == 0:
        raise ValueError("class_counts has no positive count")
    denom = np.log(n).sum() - len(n) * np.log(n.min())
    if denom <= 0:
        return math.inf
    return float((1.0 + len(n) / denom) / gamma)


def _progress(epoch: int, total_epochs: int) -> float:
    if not 1 <= epoch <= total_epochs:
        raise ValueError(f"epoch must be in 1..{total_epochs}, got {epoch}")
    return 1.0 if total_epochs == 1 else (epoch - 1) / (total_epochs - 1)


def class_ranks(class_counts) -> np.ndarray:
    """Frequency rank of each class (1 = most frequent), aligned with ``class_counts``."""
    counts = np.asarray(class_counts)
    order = np.argsort(-counts, kind="stable")
    ranks = np.empty(len(counts), dtype=np.int64)
    ranks[order] = np.arange(1, len(counts) + 1)
    return ranks


def class_distribution(class_counts, epoch: int, total_epochs: int, gamma: float) -> np.ndarray:
    """Eq.7: q_t(c) for epoch t = ``epoch`` (1..T), aligned with the order of ``class_counts``."""
    counts = np.asarray(class_counts)
    present = counts > 0
    C = int(present.sum())
    progress = _progress(epoch, total_epochs)
    a_T = alpha_hat(counts, gamma)
    ranks = class_ranks(np.where(present, counts, -1))[present].astype(np.float64)
    if math.isinf(a_T) and progress > 0:
        power = (ranks == 1).astype(np.float64)                       # limit of c^(-inf)
    else:
        a_t = 1.0 + (a_T - 1.0) * progress                             # alpha(t)
        power = ranks ** (-gamma * a_t) / (np.arange(1, C + 1, dtype=np.float64) ** (-gamma * a_t)).sum()
    q = np.zeros(len(counts))
    q[present] = (1.0 - progress) / C + progress * power
    return q


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    raw = weights * total
    base = np.floor(raw).astype(np.int64)
    rest = total - int(base.sum())
    if rest > 0:
        base[np.argsort(-(raw - base), kind="stable")[:rest]] += 1
    return base


def epoch_quota(class_counts, epoch: int, total_epochs: int, gamma: float) -> np.ndarray:
    """Samples per class in epoch t: s_t^(c) = q_t(c) S_t with S_t = t/T * N (rounded, >= 1;
    split by largest remainders), capped at the class size n^(c)."""
    counts = np.asarray(class_counts, dtype=np.int64)
    q = class_distribution(counts, epoch, total_epochs, gamma)
    s_t = max(1, math.floor(epoch / total_epochs * counts.sum() + 0.5))
    return np.minimum(_largest_remainder(q, s_t), counts)


def redistribute_shortfall(quota: np.ndarray, class_counts, q: np.ndarray, target: int) -> np.ndarray:
    """Raise ``quota`` towards ``target`` samples by giving the missing ones to classes that still
    have samples, in proportion to q among them (uniform if their q is all 0)."""
    quota = np.asarray(quota, dtype=np.int64).copy()
    counts = np.asarray(class_counts, dtype=np.int64)
    target = min(target, int(counts.sum()))
    while quota.sum() < target:
        room = counts - quota
        open_ = room > 0
        w = np.where(open_, q, 0.0)
        w = w / w.sum() if w.sum() > 0 else open_ / open_.sum()
        extra = np.minimum(_largest_remainder(w, target - int(quota.sum())), room)
        if extra.sum() == 0:  # rounding gave everything to full classes: one at a time
            extra[np.argmax(np.where(open_, w, -1.0))] = 1
        quota += extra
    return quota


# --------------------------------------------------------------------------- curricula
@dataclass(frozen=True)
class Schedule:
    """What a curriculum sees: labels, the curriculum length T and the curriculum options."""

    labels: np.ndarray
    total_epochs: int
    gamma: float
    shortfall: str
    n_buckets: int
    c0: float
    competence_epochs: int


CurriculumFn = Callable[[Schedule, int, np.ndarray], np.ndarray]
"""``(schedule, t, easy_first_order) -> sample indices`` for curriculum epoch t (1..T);
``easy_first_order`` lists all sample indices from easiest to hardest."""


def _tss(s: Schedule, t: int, order: np.ndarray) -> np.ndarray:
    counts = np.bincount(s.labels, minlength=int(s.labels.max()) + 1)
    quota = epoch_quota(counts, t, s.total_epochs, s.gamma)
    if s.shortfall == "redistribute":
        target = max(1, math.floor(t / s.total_epochs * counts.sum() + 0.5))
        quota = redistribute_shortfall(quota, counts, class_distribution(counts, t, s.total_epochs, s.gamma), target)
    ranked = s.labels[order]
    return np.concatenate([order[ranked == c][:k] for c, k in enumerate(quota)])


def _buckets(s: Schedule, order: np.ndarray) -> list[np.ndarray]:
    return [b for b in np.array_split(order, min(s.n_buckets, len(order))) if len(b)]


def _bucket_index(s: Schedule, t: int, n: int) -> int:
    return min(n - 1, (t - 1) * n // s.total_epochs)


def _baby_step(s: Schedule, t: int, order: np.ndarray) -> np.ndarray:
    buckets = _buckets(s, order)
    return np.concatenate(buckets[: _bucket_index(s, t, len(buckets)) + 1])


def _one_pass(s: Schedule, t: int, order: np.ndarray) -> np.ndarray:
    buckets = _buckets(s, order)
    return buckets[_bucket_index(s, t, len(buckets))]


def _competence(fn: Callable[[float, float, float], float]) -> CurriculumFn:
    def schedule(s: Schedule, t: int, order: np.ndarray) -> np.ndarray:
        c = min(1.0, fn(t, s.c0, s.competence_epochs))
        return order[: max(1, math.ceil(c * len(order)))]
    return schedule


CURRICULA: dict[str, CurriculumFn] = {
    "climd": _tss,
    "baby_step": _baby_step,
    "one_pass": _one_pass,
    "linear": _competence(lambda t, c0, tg: t * (1 - c0) / tg + c0),
    "root": _competence(lambda t, c0, tg: math.sqrt(t * (1 - c0 ** 2) / tg + c0 ** 2)),
    "geom": _competence(lambda t, c0, tg: c0 ** (1 - t / tg)),
}


class Curriculum:
    """Chooses each epoch's training subset from the difficulty ranking and a curriculum.

    Epochs are counted from 0 (the engine's ``epoch``). The first w = min(``warmup_epochs``,
    ``total_epochs`` - 1) epochs use every sample; the curriculum then runs for T = ``total_epochs`` - w
    epochs, its epoch t = epoch - w + 1. r is (re)measured at curriculum epoch 1 and then every
    ``difficulty_every`` epochs (0: only once). Samples of an epoch are shuffled with ``rng``.
    """

    def __init__(self, labels: np.ndarray, config: CurriculumConfig | Mapping[str, Any], total_epochs: int,
                 rng: np.random.Generator) -> None:
        cfg = from_config(CurriculumConfig, config)
        self.config = cfg
        self.name = cfg.curriculum
        self.measurer = cfg.measurer
        self.order = cfg.difficulty_order
        self.every = cfg.difficulty_every
        # a warm-up as long as the budget leaves one curriculum epoch (a search's warm-up range does not know --epochs)
        self.warmup = min(cfg.warmup_epochs, total_epochs - 1) if cfg.active else 0
        if cfg.active and self.every == 0 and self.warmup == 0:
            raise ValueError(UNTRAINED_ONLY)
        T = total_epochs - self.warmup
        self.schedule = Schedule(
            labels=np.asarray(labels, dtype=np.int64), total_epochs=T, gamma=cfg.gamma,
            shortfall=cfg.shortfall, n_buckets=cfg.n_buckets, c0=cfg.c0, competence_epochs=cfg.competence_epochs or T,
        )
        self.rng = rng
        self.r: np.ndarray | None = None

    @property
    def active(self) -> bool:
        return self.config.active

    def curriculum_epoch(self, epoch: int) -> int | None:
        """t (1..T) of the curriculum for engine epoch ``epoch`` (0-based); None during warm-up."""
        if not self.active or epoch < self.warmup:
            return None
        return min(epoch - self.warmup + 1, self.schedule.total_epochs)

    def needs_difficulty(self, epoch: int) -> bool:
        t = self.curriculum_epoch(epoch)
        if t is None:
            return False
        return self.r is None or (self.every > 0 and (t - 1) % self.every == 0)

    def set_difficulty(self, r: np.ndarray) -> None:
        self.r = np.asarray(r, dtype=np.float64)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        n = len(self.schedule.labels)
        t = self.curriculum_epoch(epoch)
        if t is None:
            chosen = np.arange(n)
        else:
            if self.r is None:
                raise RuntimeError("Curriculum: set_difficulty() must run before a curriculum epoch")
            key = self.r if self.order == "asc" else -self.r
            easy_first = np.argsort(key, kind="stable")
            chosen = CURRICULA[self.name](self.schedule, t, easy_first)
        return self.rng.permutation(chosen)

    def state_dict(self) -> dict:
        return {"r": None if self.r is None else self.r.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.r = None if state["r"] is None else np.asarray(state["r"], dtype=np.float64)
