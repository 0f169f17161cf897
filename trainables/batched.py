"""All folds of a trial as one batched model: the k fold models stacked, one forward/backward per step.

:class:`BatchedFolds` takes the trial's k :class:`trainables.engine.FoldTrainer` s, built exactly
as for per-fold training (same data, standardisation, resampling, criterion, curriculum, seeds and
initial weights), and trains them together:

- **Stacked weights.** Every parameter of the k fold models lives in one flat buffer ``[k, P]``
  (a fold's parameters are views of its row, so the fold models — used for prediction,
  CLIMD's difficulty, OmniFuse's TLA mining, ``state_dict`` — always see the trained weights). The
  method's :class:`StackedKernel` runs the fold models' forward on ``[k, B, ...]`` batches with
  batched matrix products (``torch.baddbmm``), and one backward fills the flat gradient buffer.
- **Each fold its own data order.** Every step takes the s-th mini-batch of every fold's own epoch
  order (the fold's curriculum: a shuffle, or CLIMD's subset). Folds whose batches differ in size
  (train parts differing by one sample, CLIMD's per-fold subsets) are padded to the largest batch
  of the step with a row mask; a fold with no batch left in this step (CLIMD gives folds different
  numbers of batches per epoch) is padded whole and marked inactive: its rows weigh 0 in every
  loss term (so its gradient is exactly 0) and :class:`StackedAdamW` does not step it. Padding was
  chosen over regrouping folds per step because it keeps one batched forward per step and costs
  at most one partly filled step per epoch (the k folds' epochs end within one batch of each
  other without a curriculum).
- **Each fold its own random draws.** Each fold's dropout masks and OmniFuse's simulated missing
  patterns are drawn from that fold's own torch generator (the FoldTrainer's private RNG state),
  in the order its module's forward draws them and with the same shapes, so on CPU a fold sees the
  same masks as when trained alone; the batched forward only applies them.
- **Each fold its own optimizer.** :class:`StackedAdamW` is AdamW (decoupled weight decay) over
  ``[k, P]`` with one step count per fold and the fold's own lr / weight decay (read from the
  fold's ``torch.optim.AdamW`` param group, so a PBT exploit's new lr applies). It is elementwise,
  so it equals k separate ``torch.optim.AdamW``: bit for bit when every fold steps with equal
  settings (torch's own op sequence), to 1e-7 when folds skip steps or differ in lr (tested).

Result: on CPU the same seed gives the same fold models as per-fold training, up to the float
rounding of batched vs unbatched matrix products (``tests/test_batched.py`` checks weights and
metrics). On a GPU the per-fold generators are CUDA generators seeded from the fold's CUDA RNG
state, so the draws are per fold and independent but not those of the fused dropout kernel the
per-fold path uses there: the same distribution, not the same numbers.

Checkpoints: :meth:`BatchedFolds.sync` writes the stacked optimizer state into every fold's
``torch.optim.AdamW`` and the generator states into the FoldTrainers, so ``FoldTrainer.state_dict``
is the same format as per-fold training (a per-fold checkpoint resumes batched and vice versa);
:meth:`BatchedFolds.reload` reads them back after ``load_state_dict``.

A method batches its folds when its registry entry names a kernel
(:attr:`trainables.registry.MethodSpec.stacked`): the kernel restates the method's forward and loss
on stacked weights. Kernels here: :class:`EarlyFusionStack` (``baseline``, also under CLIMD) and
:class:`OmniFuseStack` (``omnifuse``, also under CLIMD).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from trainables.backbone import logical_name
from trainables.baseline import drop_modalities, pool_tokens

# a stacked parameter is a strided view of the flat [k, P] buffer, and so is its gradient; autograd
# warns (once) that such a layout may be slow, but accumulates into it correctly
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


# ------------------------------------------------------------------------------ stacked tensors
@dataclass
class StackedBatch:
    """The s-th mini-batch of every fold, padded to ``[k, B, ...]``."""

    x: list[Tensor]        # per logical modality [k, B, D_m]: the encoder input before the availability mask
    mask: Tensor           # [k, B, M] bool availability
    y: Tensor              # [k, B] long
    valid: Tensor          # [k, B] bool: a real row (False: padding)
    sizes: list[int]       # real rows per fold (0: the fold has no batch in this step)
    drops: Tensor | None   # [n, k, B, hidden] dropout multipliers drawn per fold (None: dropout off)
    observed: Tensor       # [k, B, M] bool availability the model sees (after simulated missingness)


def linear(x: Tensor, params: dict[str, Tensor], name: str) -> Tensor:
    """nn.Linear ``name`` of every fold: x [k, B, in] -> [k, B, out]."""
    return torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), x, params[f"{name}.weight"].transpose(1, 2))


def mlp(x: Tensor, params: dict[str, Tensor], name: str, drop: Tensor | None) -> Tensor:
    """:func:`trainables.baseline.mlp` (Linear, ReLU, Dropout, Linear) with the given dropout multipliers."""
    h = torch.relu(linear(x, params, f"{name}.0"))
    return linear(h if drop is None else h * drop, params, f"{name}.3")


def weighted_mean(rows: Tensor, weight: Tensor) -> Tensor:
    """Per fold sum_i w_i l_i / sum_i w_i over [k, B]; 0 for a fold with no weight (no row kept)."""
    den = weight.sum(1)
    return torch.where(den > 0, (rows * weight).sum(1) / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


class FoldCriteria:
    """The k folds' criteria as one: per-row losses for all folds in one call, each fold's class weights."""

    def __init__(self, criteria: list, device: torch.device) -> None:
        self.base = criteria[0]
        C = None
        weights = []
        for c in criteria:
            w = c.class_weight
            weights.append(None if w is None else w.to(device, torch.float32))
            C = C or (None if w is None else int(w.shape[0]))
        self.class_weight = None if C is None else torch.stack(
            [torch.ones(C, device=device) if w is None else w for w in weights])             # [k, C]

    def row_weight(self, y: Tensor, keep: Tensor) -> Tensor:
        """[k, B]: w_{y_i} of each row's fold (1 without class weights), 0 where not ``keep``."""
        w = keep.to(torch.float32)
        return w if self.class_weight is None else w * self.class_weight.gather(1, y)

    def rows(self, logits: Tensor, y: Tensor) -> Tensor:
        """Unweighted per-row loss [k, B] of logits [k, B, C]."""
        return self.base.rows(logits, y)

    def mean(self, logits: Tensor, y: Tensor, keep: Tensor) -> Tensor:
        """The criterion's ``mean`` reduction per fold over the rows in ``keep``: [k]."""
        return weighted_mean(self.rows(logits, y), self.row_weight(y, keep))


# ------------------------------------------------------------------------------ optimizer
class StackedAdamW:
    """AdamW (Loshchilov & Hutter 2019, Alg. 2; torch.optim.AdamW's update) on ``[k, P]`` with a
    per-fold step count; an inactive fold keeps its parameters, moments and step count exactly."""

    def __init__(self, flat: Tensor, optimizers: list[torch.optim.Optimizer]) -> None:
        self.flat = flat
        self.optimizers = optimizers
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self.steps = np.zeros(flat.shape[0], dtype=np.float64)
        for opt in optimizers:
            group = opt.param_groups[0]
            if len(opt.param_groups) != 1 or group.get("amsgrad") or group.get("maximize"):
                raise ValueError("StackedAdamW: one plain AdamW param group per fold expected")

    def _column(self, values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=self.flat.dtype, device=self.flat.device).unsqueeze(1)

    @torch.no_grad()
    def step(self, grad: Tensor, active: np.ndarray) -> None:
        groups = [opt.param_groups[0] for opt in self.optimizers]
        self.steps += active
        lr = [float(g["lr"]) for g in groups]
        wd = [float(g["weight_decay"]) for g in groups]
        b1 = [float(g["betas"][0]) for g in groups]
        b2 = [float(g["betas"][1]) for g in groups]
        eps = {float(g["eps"]) for g in groups}
        if len(eps) != 1:
            raise ValueError("StackedAdamW: folds with different eps")
        on = [bool(a) for a in active]
        t = [max(s, 1.0) for s in self.steps]
        if all(on) and len({*zip(lr, wd, b1, b2, t)}) == 1:  # the common step: torch's scalar ops, no temporaries
            lr0, wd0, beta1, beta2, t0 = lr[0], wd[0], b1[0], b2[0], t[0]
            self.flat.mul_(1 - lr0 * wd0)
            self.exp_avg.lerp_(grad, 1 - beta1)
            self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (self.exp_avg_sq.sqrt() / ((1 - beta2 ** t0) ** 0.5)).add_(eps.pop())
            self.flat.addcdiv_(self.exp_avg, denom, value=(lr0 / (1 - beta1 ** t0)) * -1)
            return
        # the same python-float arithmetic as torch.optim.adam._multi_tensor_adam, per fold
        decay = self._column([1 - lr[k] * wd[k] if on[k] else 1.0 for k in range(len(on))])
        w1 = self._column([1 - b1[k] if on[k] else 0.0 for k in range(len(on))])
        keep2 = self._column([b2[k] if on[k] else 1.0 for k in range(len(on))])
        w2 = self._column([1 - b2[k] if on[k] else 0.0 for k in range(len(on))])
        step_size = self._column([(lr[k] / (1 - b1[k] ** t[k])) * -1 if on[k] else 0.0 for k in range(len(on))])
        bc2_sqrt = self._column([(1 - b2[k] ** t[k]) ** 0.5 if on[k] else 1.0 for k in range(len(on))])
        self.flat.mul_(decay)
        self.exp_avg.lerp_(grad, w1)
        self.exp_avg_sq.mul_(keep2).addcmul_(grad * w2, grad)
        denom = (self.exp_avg_sq.sqrt() / bc2_sqrt).add_(eps.pop())
        self.flat.addcdiv_(self.exp_avg * step_size, denom)


# ------------------------------------------------------------------------------ kernels
class StackedKernel:
    """A method's forward and loss on stacked weights. Subclasses restate the module's math."""

    def __init__(self, model: torch.nn.Module, config: dict) -> None:
        self.model = model                       # fold 0's module: its structure and switches
        self.hidden = int(config["hidden"])      # the width of every dropout layer (trainables.baseline.mlp)

    def n_drops(self, lazy: Tensor | None) -> int:
        """How many dropout masks one fold's forward draws (``lazy``: the fold's delta_lazy, if any)."""
        raise NotImplementedError

    def simulate(self, g: torch.Generator, available: Tensor) -> Tensor:
        """The availability one fold's forward sees ([B, M] bool), drawn before its dropout masks."""
        raise NotImplementedError

    def loss(self, params: dict[str, Tensor], buffers: dict[str, Tensor], batch: StackedBatch,
             criteria: FoldCriteria) -> tuple[Tensor, dict[str, Tensor]]:
        """(per-fold total loss [k], per-fold parts [k])."""
        raise NotImplementedError

    def end_epoch(self, params: dict[str, Tensor], buffers: dict[str, Tensor], train: StackedBatch) -> list[dict] | None:
        """The module's ``end_epoch`` for every fold at once on the whole training parts (``train``,
        no dropout); None: run each fold module's own ``end_epoch``."""
        return None


def _dropout_draw(g: torch.Generator, out: Tensor, p: float) -> None:
    """What ``torch.nn.functional.dropout`` draws on CPU for a [B, h] input: bernoulli(1 - p), in place."""
    out.bernoulli_(1 - p, generator=g)


class EarlyFusionStack(StackedKernel):
    """:class:`trainables.baseline.EarlyFusion` on stacked weights.

    Per fold the module draws one dropout mask in each encoder (in modality order) and one in the
    classifier; the unimodal heads are linear probes on detached embeddings."""

    def n_drops(self, lazy: Tensor | None) -> int:
        return len(self.model.modalities) + 1

    def simulate(self, g: torch.Generator, available: Tensor) -> Tensor:
        """The module's training-time modality drop (``modality_dropout``) with the fold's generator."""
        return drop_modalities(available, self.model.modality_dropout, g)

    def loss(self, params, buffers, batch, criteria):
        obs = batch.observed.to(torch.float32)
        d = iter(range(self.n_drops(None)))
        drop = (lambda: None) if batch.drops is None else (lambda: batch.drops[next(d)])
        emb = [mlp(x * obs[..., m:m + 1], params, f"encoders.{m}.net", drop()) for m, x in enumerate(batch.x)]
        fused = torch.cat([*(e * obs[..., m:m + 1] for m, e in enumerate(emb)), obs], dim=-1)
        logits = mlp(fused, params, "classifier", drop())
        keep = batch.valid
        cls = criteria.mean(logits, batch.y, keep)
        probe = sum(criteria.mean(linear(e.detach(), params, f"unimodal_heads.{m}"), batch.y, keep & batch.observed[..., m])
                    for m, e in enumerate(emb))
        return cls + probe, {"loss_cls": cls.detach(), "loss_probe": probe.detach()}


class OmniFuseStack(StackedKernel):
    """:class:`trainables.omnifuse.OmniFuse` on stacked weights (Eq.1-18, as restated there).

    Per fold the module draws, in order: the simulated missing pattern (when a CRA runs), one
    dropout mask per encoder (embed), one in the joint classifier g_rc, one per unimodal
    classifier g_m, one per encoder again for v_full (when ``imp_forward``), and one per encoder
    plus one in g_rc for the ``restrict`` TLA pass (once delta_lazy is mined)."""

    def n_drops(self, lazy: Tensor | None) -> int:
        m = self.model
        M = len(m.modalities)
        n = M + 1 + M + (M if m.imp_forward else 0)
        if m.tla and m.tla_mask == "restrict" and lazy is not None and bool(lazy.any()):
            n += M + 1
        return n

    def simulate(self, g: torch.Generator, available: Tensor) -> Tensor:
        """:meth:`OmniFuse.simulate_missing` with the fold's generator (only while a CRA runs)."""
        if not self.model.use_cra:
            return available
        return drop_modalities(available, self.model.modality_dropout, g)

    def _embed(self, params, batch, observed: Tensor, drop) -> Tensor:
        obs = observed.to(torch.float32)
        return torch.cat([mlp(x * obs[..., m:m + 1], params, f"encoders.{m}.net", drop()) for m, x in enumerate(batch.x)], dim=-1)

    def _cra(self, params, name: str, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        acc = torch.zeros_like(x)
        latents = []
        for i in range(len(self.model.forward_cra.ras)):
            s = torch.relu(linear(x + acc, params, f"{name}.ras.{i}.encode.0"))           # Eq.4
            acc = acc + linear(s, params, f"{name}.ras.{i}.decode")
            latents.append(s)
        return x + acc, latents                                                            # Eq.5 / Eq.6

    def _fuse(self, params, v: Tensor, drop) -> tuple[Tensor, Tensor]:
        if not self.model.use_cra:
            return v, mlp(v, params, "joint_classifier", drop())
        v_prime, latents = self._cra(params, "forward_cra", v)
        return v_prime, mlp(torch.cat(latents, dim=-1), params, "joint_classifier", drop())  # Eq.11

    def loss(self, params, buffers, batch, criteria):
        m = self.model
        M, d = len(batch.x), m.d
        k, B = batch.y.shape
        it = iter(range(batch.drops.shape[0] if batch.drops is not None else 0))
        drop = (lambda: None) if batch.drops is None else (lambda: batch.drops[next(it)])
        available, observed, y, valid = batch.mask, batch.observed, batch.y, batch.valid
        v = self._embed(params, batch, observed, drop)                                     # Eq.1-3
        v_prime, o = self._fuse(params, v, drop)
        per_modality = v_prime.view(k, B, M, d)
        heads_in = per_modality if m.dwfuse else per_modality.detach()
        unimodal = [mlp(heads_in[:, :, j], params, f"unimodal_classifiers.{j}", drop())
                    for j in range(M)]                                                     # Eq.9
        zero = torch.zeros(k, device=y.device)
        rowf = valid.to(torch.float32)
        n_rows = rowf.sum(1)
        if m.imp_forward:                                                                  # Eq.7
            with torch.no_grad():
                v_full = self._embed(params, batch, available, drop)
            l_fw = self._slot_mse(v_prime, v_full, available & valid[..., None])
        else:
            l_fw = zero
        if m.imp_backward:                                                                 # Eq.6, Eq.8
            v_back = self._cra(params, "backward_cra", v_prime)[0]
            l_bw = self._slot_mse(v_back, v.detach(), observed & valid[..., None])
        else:
            l_bw = zero
        l_rc = criteria.mean(o, y, valid)                                                  # Eq.13
        parts: dict[str, Tensor] = {}
        if m.dwfuse:
            logits = torch.stack(unimodal, dim=2)                                          # [k, B, M, C]
            yy = y.unsqueeze(2).expand(k, B, M)
            per = criteria.rows(logits, yy) * criteria.row_weight(y, valid).unsqueeze(2)   # w_y l, as reduction="none"
            p_true = torch.softmax(logits, -1).gather(3, yy.unsqueeze(3))[..., 0].detach()  # [k, B, M]
            omega = _dwfuse_weights(p_true, m.beta)                                        # Eq.10
            present = torch.ones_like(observed) if m.use_cra else observed
            l_ens = (omega * per * present).sum(2).sum(1) / n_rows.clamp_min(1.0)          # Eq.12
            l_dw = l_ens + m.alpha * l_rc                                                  # Eq.14
            parts["loss_ens"] = l_ens
        else:
            l_dw = l_rc
            parts["loss_probe"] = sum(criteria.mean(lg, y, valid & observed[..., j]) for j, lg in enumerate(unimodal))
        lazy = buffers["lazy"]                                                             # [k, M]
        has_lazy = lazy.any(1)
        if m.tla and bool(has_lazy.any()):                                                 # Eq.16-17
            if m.tla_mask == "combination":
                tla_logits, select = o, (observed == lazy[:, None, :]).all(-1)
            else:
                restricted = available & lazy[:, None, :]
                tla_logits = self._fuse(params, self._embed(params, batch, restricted, drop), drop)[1]
                select = (restricted == lazy[:, None, :]).all(-1)
            l_tla = criteria.mean(tla_logits, y, valid & select & has_lazy[:, None])
        else:
            l_tla = zero
        total = l_fw + m.lambda1 * l_bw + m.lambda2 * l_dw + m.lambda3 * l_tla             # Eq.18
        if "loss_probe" in parts:
            total = total + parts["loss_probe"]
        parts.update(loss_forward=l_fw, loss_backward=l_bw, loss_rc=l_rc, loss_tla=l_tla)
        return total, {key: val.detach() for key, val in parts.items()}

    @torch.no_grad()
    def end_epoch(self, params, buffers, train):
        """:meth:`OmniFuse.end_epoch` (TLA mining, Eq.15) of every fold: the mean L1 distance
        ||softmax(o) - onehot(y)||_1 of each combination over the fold's samples that have it, the
        argmax (the first on ties) becomes the fold's delta_lazy."""
        m = self.model
        if not m.tla:
            return [{} for _ in range(train.y.shape[0])]
        from trainables.omnifuse import all_combinations

        combos = all_combinations(len(m.modalities))
        onehot = torch.nn.functional.one_hot(train.y, m.num_classes).to(torch.float32)
        totals, counts = [], []
        for delta in combos:
            delta = delta.to(train.mask.device)
            restricted = train.mask & delta
            eligible = (restricted == delta).all(-1) & train.valid
            probs = torch.softmax(self._fuse(params, self._embed(params, train, restricted, lambda: None), lambda: None)[1], -1)
            totals.append(((probs - onehot).abs().sum(-1) * eligible).sum(1))
            counts.append(eligible.sum(1))
        totals_h = torch.stack(totals).double().cpu().numpy()                                # [combinations, k]
        counts_h = torch.stack(counts).cpu().numpy()
        out = []
        lazy = buffers["lazy"]
        for f in range(totals_h.shape[1]):
            scored = [(j, totals_h[j, f] / counts_h[j, f]) for j in range(len(combos)) if counts_h[j, f]]
            j, dist = max(scored, key=lambda r: r[1])
            lazy[f].copy_(combos[j])
            code = sum(1 << i for i in range(len(combos[j])) if bool(combos[j][i]))
            out.append({"tla_lazy_combination": float(code), "tla_lazy_distance": float(dist)})
        return out

    def _slot_mse(self, a: Tensor, b: Tensor, slots: Tensor) -> Tensor:
        w = slots.repeat_interleave(self.model.d, dim=2).to(a.dtype)                      # [k, B, M*d]
        return (((a - b) ** 2) * w).sum((1, 2)) / w.sum((1, 2)).clamp_min(1.0)


def _dwfuse_weights(p: Tensor, beta: float) -> Tensor:
    """Eq.10 on [k, B, M]: omega_m = [prod_{n != m} (1 - p_n)]^(beta / (M-1))."""
    M = p.shape[-1]
    if M == 1:
        return torch.ones_like(p)
    q = 1.0 - p
    others = torch.stack([torch.cat([q[..., :j], q[..., j + 1:]], dim=-1).prod(dim=-1) for j in range(M)], dim=-1)
    return others.clamp_min(0.0) ** (beta / (M - 1))


# ------------------------------------------------------------------------------ the trainer
class BatchedFolds:
    """k FoldTrainers trained as one stacked model (see the module docs)."""

    def __init__(self, trainers: list, kernel_cls: type[StackedKernel]) -> None:
        self.trainers = trainers
        t0 = trainers[0]
        self.device = t0.device
        self.batch_size = t0.batch_size
        self.kernel = kernel_cls(t0.model, t0.config)
        self.dropout = float(t0.config.get("dropout", 0.0))
        k = len(trainers)
        models = [t.model for t in trainers]

        # parameters: one flat [k, P] buffer; every fold's parameter a view of its row
        named = [dict(mdl.named_parameters()) for mdl in models]
        self.names = list(named[0])
        sizes = [named[0][n].numel() for n in self.names]
        P = sum(sizes)
        self.flat = torch.empty(k, P, device=self.device)
        self.grad = torch.zeros(k, P, device=self.device)
        self.params: dict[str, Tensor] = {}
        off = 0
        for n, size in zip(self.names, sizes):
            shape = named[0][n].shape
            for f in range(k):
                self.flat[f, off:off + size] = named[f][n].detach().reshape(-1)
            stacked = self.flat[:, off:off + size].view(k, *shape)
            stacked.requires_grad_(True)
            stacked.grad = self.grad[:, off:off + size].view(k, *shape)   # backward accumulates here
            self.params[n] = stacked
            for f in range(k):
                named[f][n].data = self.flat[f, off:off + size].view(shape)
            off += size
        # buffers (OmniFuse's delta_lazy): stacked, every fold's buffer a view
        self.buffers: dict[str, Tensor] = {}
        bufs = [dict(mdl.named_buffers()) for mdl in models]
        for n in bufs[0]:
            stacked = torch.stack([b[n].detach() for b in bufs])
            for f in range(k):
                bufs[f][n].data = stacked[f]
            self.buffers[n] = stacked
        self.optimizer = StackedAdamW(self.flat, [t.optimizer for t in trainers])

        # data: every fold's training part, concatenated once; encoder inputs pooled once
        datas = [t.train_data for t in trainers]
        self.offsets = np.cumsum([0] + [len(d) for d in datas[:-1]])
        modalities = datas[0].spec.modalities
        xs = []
        for mod in modalities:
            per_fold = []
            for d in datas:
                parts = []
                for name, x in d.inputs.items():
                    if logical_name(name) != mod:
                        continue
                    if x.dim() == 3:
                        x = pool_tokens(x, d.token_masks.get(name))
                    parts.append(x)
                per_fold.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1))
            xs.append(torch.cat(per_fold))
        self.x = xs
        self.mask = torch.cat([d.mask for d in datas])
        self.y = torch.cat([d.y for d in datas])
        self.criteria = FoldCriteria([t.criterion for t in trainers], self.device)
        n_max = max(len(d) for d in datas)
        full = np.array([self.offsets[f] + np.minimum(np.arange(n_max), len(d) - 1) for f, d in enumerate(datas)])
        full_t = torch.as_tensor(full, device=self.device)
        valid = torch.as_tensor(np.array([np.arange(n_max) < len(d) for d in datas]), device=self.device)
        self.full = StackedBatch(x=[x[full_t] for x in self.x], mask=self.mask[full_t], y=self.y[full_t], valid=valid,
                                 sizes=[len(d) for d in datas], drops=None, observed=self.mask[full_t])
        self.generators = [torch.Generator(device=self.device) for _ in trainers]
        self.reload()

    def _take_rng(self) -> None:
        for t, g in zip(self.trainers, self.generators):
            g.set_state(self._rng_state(t))

    def _give_rng(self) -> None:
        for t, g in zip(self.trainers, self.generators):
            if self.device.type == "cuda":
                t._cuda_state = g.get_state()
            else:
                t._torch_state = g.get_state()

    # ------------------------------------------------------------------ rng and checkpoints
    def _rng_state(self, t) -> Tensor:
        return t._cuda_state if self.device.type == "cuda" else t._torch_state

    def reload(self) -> None:
        """Take optimizer and RNG state from the FoldTrainers (after ``load_state_dict``)."""
        self._take_rng()
        for f, t in enumerate(self.trainers):
            params = [p for group in t.optimizer.param_groups for p in group["params"]]
            states = [t.optimizer.state.get(p, {}) for p in params]
            off = 0
            step = 0.0
            for _n, p, st in zip(self.names, params, states):
                size = p.numel()
                if "exp_avg" in st:
                    self.optimizer.exp_avg[f, off:off + size] = st["exp_avg"].reshape(-1)
                    self.optimizer.exp_avg_sq[f, off:off + size] = st["exp_avg_sq"].reshape(-1)
                    step = float(st["step"])
                else:
                    self.optimizer.exp_avg[f, off:off + size] = 0.0
                    self.optimizer.exp_avg_sq[f, off:off + size] = 0.0
                off += size
            self.optimizer.steps[f] = step

    def sync(self) -> None:
        """Write optimizer and RNG state into the FoldTrainers (before ``state_dict``)."""
        self._give_rng()
        for f, t in enumerate(self.trainers):
            params = [p for group in t.optimizer.param_groups for p in group["params"]]
            if self.optimizer.steps[f] == 0:
                continue
            off = 0
            for p in params:
                size = p.numel()
                t.optimizer.state[p] = {
                    "step": torch.tensor(float(self.optimizer.steps[f])),
                    "exp_avg": self.optimizer.exp_avg[f, off:off + size].view(p.shape).clone(),
                    "exp_avg_sq": self.optimizer.exp_avg_sq[f, off:off + size].view(p.shape).clone(),
                }
                off += size

    # ------------------------------------------------------------------ one epoch
    def _draw(self, batch: StackedBatch) -> None:
        """Every fold's random draws, from its own generator, in its module's order."""
        k, B = batch.y.shape
        lazy = self.buffers.get("lazy")
        observed = batch.mask.clone()
        n = max(self.kernel.n_drops(None if lazy is None else lazy[f]) for f in range(k))
        use_drop = 0.0 < self.dropout < 1.0  # F.dropout draws nothing for p = 0 or p = 1
        drops = torch.ones(n, k, B, self.kernel.hidden, device=self.device) if use_drop else None
        if self.dropout >= 1.0:
            drops = torch.zeros(n, k, B, self.kernel.hidden, device=self.device)
        for f, (size, g) in enumerate(zip(batch.sizes, self.generators)):
            if size == 0:
                continue
            observed[f, :size] = self.kernel.simulate(g, batch.mask[f, :size])
            if use_drop:
                for j in range(self.kernel.n_drops(None if lazy is None else lazy[f])):
                    _dropout_draw(g, drops[j, f, :size], self.dropout)
        if use_drop:
            drops.div_(1 - self.dropout)
        batch.drops, batch.observed = drops, observed

    def train_epoch(self) -> list[dict[str, float]]:
        """One epoch of every fold; returns each fold's parts as ``FoldTrainer.train_epoch`` does."""
        trainers = self.trainers
        k, bs = len(trainers), self.batch_size
        epoch = trainers[0].epoch
        if any(t.epoch != epoch for t in trainers):
            raise RuntimeError("BatchedFolds: the folds are at different epochs")
        if epoch >= trainers[0].epochs:
            raise RuntimeError(f"all {trainers[0].epochs} epochs are done (config 'epochs')")
        orders = []
        for t in trainers:
            if t.curriculum.needs_difficulty(epoch):
                with t._own_rng():
                    t.curriculum.set_difficulty(t.measure_difficulty())
            orders.append(np.asarray(t.curriculum.epoch_indices(epoch), dtype=np.int64))
        self._take_rng()
        counts = np.array([len(o) for o in orders])
        steps = int(max(-(-int(c) // bs) for c in counts)) if len(counts) else 0
        # the epoch's index table, built once: [steps, k, bs] global rows (padding: the fold's first row)
        table = np.empty((steps, k, bs), dtype=np.int64)
        valid = np.zeros((steps, k, bs), dtype=bool)
        for f, order in enumerate(orders):
            padded = np.full(steps * bs, self.offsets[f], dtype=np.int64)
            padded[:len(order)] = order + self.offsets[f]
            table[:, f] = padded.reshape(steps, bs)
            valid[:, f] = (np.arange(steps * bs) < len(order)).reshape(steps, bs)
        sizes_all = valid.sum(2)
        table_t = torch.as_tensor(table, device=self.device)
        valid_t = torch.as_tensor(valid, device=self.device)
        sums: dict[str, Tensor] = defaultdict(lambda: torch.zeros(k, device=self.device))
        for s in range(steps):
            B = int(sizes_all[s].max())
            idx = table_t[s, :, :B]
            batch = StackedBatch(x=[x[idx] for x in self.x], mask=self.mask[idx], y=self.y[idx], valid=valid_t[s, :, :B],
                                 sizes=[int(c) for c in sizes_all[s]], drops=None, observed=self.mask[idx])
            self._draw(batch)
            loss, parts = self.kernel.loss(self.params, self.buffers, batch, self.criteria)
            self.grad.zero_()
            loss.sum().backward()
            active = sizes_all[s] > 0
            self.optimizer.step(self.grad, active)
            n = torch.as_tensor(sizes_all[s], dtype=torch.float32, device=self.device)
            sums["loss"] += loss.detach() * n
            for key, v in parts.items():
                sums[key] += v * n
        self._give_rng()
        out = []
        seen = np.maximum(counts, 1)
        host = {key: v.cpu().double().numpy() for key, v in sums.items()}
        ends = self.kernel.end_epoch(self.params, self.buffers, self.full)
        for f, t in enumerate(trainers):
            if ends is None:
                with t._own_rng():
                    end = t.model.end_epoch(t.train_data, t.criterion)
            else:
                end = ends[f]
            t.epoch += 1
            out.append({**{key: float(v[f] / seen[f]) for key, v in host.items()}, "epoch_samples": float(counts[f]), **end})
        return out
