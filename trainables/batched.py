"""All members of a trial (its k folds) as one batched model: the method's own module run for every
member at once with ``torch.vmap``, one forward/backward per step.

:class:`BatchedFolds` takes the trial's :class:`trainables.engine.FoldTrainer` s (its members: the
k folds; any number of them, e.g. R repetitions x k folds), built exactly as for per-fold
training (same data, standardisation, resampling, criterion, curriculum, seeds and initial
weights), and trains them together:

- **One definition.** A step is ``torch.func.functional_call`` of the method's own module and
  ``loss`` (one template: :func:`trainables.members.member_template` of member 0's module, and
  member 0's criterion) under ``torch.vmap`` over the members' stacked parameters, buffers,
  criterion class weights and mini-batches. The loss of the step is the *sum* of the members'
  losses, so each member's gradient is its solo gradient.
- **Stacked weights.** Every parameter of the members lives in one flat buffer ``[n, P]`` (a
  member's parameters are views of its row, so the fold models, used for prediction, CLIMD's
  difficulty, OmniFuse's TLA mining and ``state_dict``, always see the trained weights). Within its
  block a parameter is laid out as autograd lays out its gradient (a linear weight transposed:
  the batched matmul's backward gives it so), found by one throw-away step at construction; each
  step's gradients (``torch.autograd.grad``) are copied into the flat gradient buffer as
  contiguous runs. Accumulating them into ``.grad`` views of a row-major buffer instead (a
  transposed add for every weight) cost more than the AdamW step. Buffers are stacked the same way; a buffer equal in
  every member (OmniFuse's ``mined``) is passed once, unbatched, so the module's forward may
  branch on it in Python.
- **Each member its own data order.** Every step takes the s-th mini-batch of every member's own
  epoch order (its curriculum: a shuffle, or CLIMD's subset). Members whose batches differ in size
  (train parts differing by one sample, CLIMD's per-fold subsets) are run in one vmapped call per
  size (at most a few steps per epoch: the members' epochs end within a batch of each other without
  a curriculum); a member with no batch left in this step (CLIMD) has no call and gets no AdamW
  step. Not padding: the module's own loss averages over its batch and must see only real rows.
- **Each member its own random draws.** Dropout masks and OmniFuse's simulated missing patterns
  are custom ops whose vmap rule draws member by member from the member's own generator (the
  FoldTrainer's private RNG state), in the order and with the shapes of its solo forward
  (:mod:`trainables.members`), so on CPU a member sees the same masks as when trained alone.
- **Each member its own optimizer.** :class:`StackedAdamW` is AdamW (decoupled weight decay) over
  ``[n, P]`` with one step count per member and the member's own lr / weight decay (read at
  every step from the member's AdamW param group, ``FoldTrainer.param_group``, so a PBT exploit's
  new lr applies; torch's optimizer itself is built only for a checkpoint's moments). It is
  elementwise, so it equals n separate ``torch.optim.AdamW(fused=True)`` (the FoldTrainers'): bit
  for bit when every member steps with equal settings (torch's fused kernel over the flat buffer,
  one pass), to 1e-7 when members skip steps or differ in lr (tested). ``torch.optim.AdamW`` on
  the stacked tensors would equal it only while every member steps (one step count per tensor),
  which CLIMD's uneven folds break.

- **Validation in one pass.** :meth:`BatchedFolds.validation_probs` runs the members' validation
  parts through one vmapped forward (eval mode, no draw, the parts padded to the longest with the
  member's first row: a sample's logits depend on its own row only), giving what each fold model's
  ``predict_proba`` gives, to float rounding.

Result: on CPU the same seed gives the same fold models as per-fold training, up to the float
rounding of batched vs unbatched kernels (``tests/test_batched.py`` checks weights, RNG states and
metrics). On a GPU the member generators are CUDA generators seeded from the fold's CUDA RNG
state, so the draws are per member and independent but not those of the fused dropout kernel the
per-fold path uses there: the same distribution, not the same numbers.

Checkpoints: :meth:`BatchedFolds.sync` writes the stacked optimizer state into every member's
``torch.optim.AdamW`` (not for a finished trial's checkpoint, which holds no moments) and the
generator states into the FoldTrainers, so ``FoldTrainer.state_dict``
is the same format as per-fold training (a per-fold checkpoint resumes batched and vice versa);
:meth:`BatchedFolds.reload` reads them back after ``load_state_dict``.

A method batches its folds when its registry entry says so
(:attr:`trainables.registry.MethodSpec.batches_folds`): its forward and loss must run under vmap
(no Python control flow on per-member tensors, no data-dependent shapes, loss parts as tensors);
the registry says why the others do not.
"""

from __future__ import annotations

import copy
import functools
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.adamw import adamw

from trainables.backbone import Backbone, Batch, Criterion
from trainables.members import member_generators, member_index, member_template


# ------------------------------------------------------------------------------ optimizer
class StackedAdamW:
    """AdamW (Loshchilov & Hutter 2019, Alg. 2; torch.optim.AdamW's update) on ``[k, P]`` with a
    per-fold step count; an inactive fold keeps its parameters, moments and step count exactly."""

    def __init__(self, flat: Tensor, groups: Sequence[Callable[[], Mapping[str, Any]]]) -> None:
        """``groups``: per member, its current AdamW param group (``lr``, ``weight_decay``, ``betas``,
        ``eps``), read at every step, so a PBT exploit's new lr applies."""
        self.flat = flat
        self.groups = groups
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self.denom = torch.empty_like(flat)   # sqrt(v_t / (1 - beta2^t)) + eps, reused: no [n, P] temporaries per step
        self.steps = np.zeros(flat.shape[0], dtype=np.float64)
        for group in groups:
            if group().get("amsgrad") or group().get("maximize"):
                raise ValueError("StackedAdamW: a plain AdamW param group per fold expected")

    def _column(self, values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=self.flat.dtype, device=self.flat.device).unsqueeze(1)

    @torch.no_grad()
    def step(self, grad: Tensor, active: np.ndarray) -> None:
        groups = [group() for group in self.groups]
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
        if all(on) and len({*zip(lr, wd, b1, b2, t)}) == 1:  # the common step: torch's fused AdamW, one pass
            step = torch.tensor(t[0] - 1.0)  # the kernel counts this step itself
            adamw([self.flat], [grad], [self.exp_avg], [self.exp_avg_sq], [], [step], fused=True, amsgrad=False,
                  beta1=b1[0], beta2=b2[0], lr=lr[0], weight_decay=wd[0], eps=eps.pop(), maximize=False)
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
        denom = torch.sqrt(self.exp_avg_sq, out=self.denom).div_(bc2_sqrt).add_(eps.pop())
        self.flat.addcdiv_(self.exp_avg * step_size, denom)


# ------------------------------------------------------------------------------ one member's step
class MemberStep(nn.Module):
    """One member's training loss, the module that is vmapped: the method's forward and ``loss`` with
    the member's criterion (a submodule, so its class weights are stacked like any buffer)."""

    def __init__(self, model: Backbone, criterion: Criterion) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        return self.model.loss(self.model(batch), batch, self.criterion)


class Rows:
    """The members' parts of one kind (training or validation) concatenated: ``inputs``,
    ``token_masks``, ``mask``, ``y``, ``local`` (a row's index in its member's part, ``Batch.index``),
    member f's rows from ``offsets[f]``, ``lengths[f]`` of them."""

    def __init__(self, datas: list, device: torch.device, views: bool = False) -> None:
        """``views``: the members' own tensors become views of the concatenation (no second copy)."""
        self.lengths = np.array([len(d) for d in datas])
        self.offsets = np.cumsum([0, *self.lengths[:-1]])
        self.inputs = {k: self._concat(datas, views, "inputs", k) for k in datas[0].inputs}
        self.token_masks = {k: self._concat(datas, views, "token_masks", k) for k in datas[0].token_masks}
        self.mask = self._concat(datas, views, "mask")
        self.y = self._concat(datas, views, "y")
        self.local = torch.cat([torch.arange(len(d), device=device) for d in datas])

    @staticmethod
    def _concat(datas: list, views: bool, attr: str, key: str | None = None) -> Tensor:
        """The members' tensors ``TensorData.<attr>`` (``[key]`` of that dict) concatenated; with
        ``views``, each member's tensor replaced by its view of the concatenation."""
        parts = [getattr(d, attr) if key is None else getattr(d, attr)[key] for d in datas]
        whole = torch.cat(parts)
        if views:
            off = 0
            for d, part in zip(datas, parts):
                view = whole[off:off + len(part)]
                if key is None:
                    setattr(d, attr, view)
                else:
                    getattr(d, attr)[key] = view
                off += len(part)
        return whole

    def padded(self, start: int, stop: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Positions ``start:stop`` of every member's part as global rows [n, stop - start], a member's
        positions past its length padded with its first row, and which positions are real."""
        pos = np.arange(start, stop)
        real = pos < self.lengths[:, None]
        rows = self.offsets[:, None] + np.where(real, pos, 0)
        return torch.as_tensor(rows, device=device), torch.as_tensor(real, device=device)


class MemberOutput(nn.Module):
    """One member's output other than its loss, ``read(model, batch)``: the end-of-epoch statistics
    (:meth:`trainables.backbone.Backbone.epoch_statistics`) or the logits (what
    :meth:`~trainables.backbone.Backbone.predict_proba` takes the softmax of)."""

    def __init__(self, model: Backbone, read: Callable[[Backbone, Batch], Any]) -> None:
        super().__init__()
        self.model = model
        self.read = read

    def forward(self, batch: Batch) -> Any:
        return self.read(self.model, batch)


# ------------------------------------------------------------------------------ the trainer
class BatchedFolds:
    """n FoldTrainers (``members``: a trial's folds) trained as one stacked model (see the module docs)."""

    def __init__(self, members: list) -> None:
        self.trainers = members
        t0 = members[0]
        self.device = t0.device
        self.batch_size = t0.batch_size
        n = len(members)
        self.template = MemberStep(member_template(t0.model), copy.deepcopy(t0.criterion)).train()
        # the same module as the template's: parameter names model.*
        self.statistics = MemberOutput(self.template.model, lambda model, batch: model.epoch_statistics(batch))
        self.logits = MemberOutput(self.template.model, lambda model, batch: model(batch).logits)

        # parameters: first stacked on their own; one flat [n, P] buffer once their layouts are known
        named = [dict(t.model.named_parameters()) for t in members]
        self.names = list(named[0])
        self.params: dict[str, Tensor] = {
            k: torch.stack([named[f][k].detach() for f in range(n)]).requires_grad_(True) for k in self.names}
        # buffers of the module and the criterion: stacked, every member's module buffer a view
        self.buffers: dict[str, Tensor] = {}
        bufs = [dict(MemberStep(t.model, t.criterion).named_buffers()) for t in members]
        for k in bufs[0]:
            stacked = torch.stack([b[k].detach() for b in bufs])
            for f in range(n):
                bufs[f][k].data = stacked[f]
            self.buffers[k] = stacked
        self._param_keys = [f"model.{k}" for k in self.params]
        # every tensor of the template is replaced in each call (checked here once: the calls skip the check)
        names = {f"model.{k}" for k in self.params} | set(self.buffers)
        if names != {k for k, _ in self.template.named_parameters()} | {k for k, _ in self.template.named_buffers()}:
            raise ValueError("BatchedFolds: the members' modules differ from their template in parameters or buffers")

        # data: every member's training part, concatenated once; the members' own tensors become views
        self.train = Rows([t.train_data for t in members], self.device, views=True)
        self.val: Rows | None = None  # the validation parts, concatenated when first evaluated
        self.generators = [torch.Generator(device=self.device) for _ in members]
        self.orders = self._gradient_orders()
        self.flat = torch.empty(n, sum(p[0].numel() for p in self.params.values()), device=self.device)
        self.grad = torch.zeros_like(self.flat)
        self._grads = self._blocks(self.grad)
        for (k, stacked), block in zip(list(self.params.items()), self._blocks(self.flat)):
            block.copy_(stacked.detach())
            self.params[k] = block.requires_grad_(True)
            for f in range(n):
                named[f][k].data = block.detach()[f]   # every member's parameter a view of its row
        self.optimizer = StackedAdamW(self.flat, [functools.partial(getattr, t, "param_group") for t in members])
        self.reload()   # the members' own generator states, after the layout's throw-away draws

    # ------------------------------------------------------------------ rng and checkpoints
    def _rng_state(self, t) -> Tensor:
        return t._cuda_state if self.device.type == "cuda" else t._torch_state

    def _take_rng(self) -> None:
        for t, g in zip(self.trainers, self.generators):
            g.set_state(self._rng_state(t))

    def _give_rng(self) -> None:
        for t, g in zip(self.trainers, self.generators):
            if self.device.type == "cuda":
                t._cuda_state = g.get_state()
            else:
                t._torch_state = g.get_state()

    def reload(self) -> None:
        """Take optimizer and RNG state from the FoldTrainers (after ``load_state_dict``)."""
        self._take_rng()
        self.val = None  # a loaded standardiser makes the validation tensors anew
        exp_avg, exp_avg_sq = self._blocks(self.optimizer.exp_avg), self._blocks(self.optimizer.exp_avg_sq)
        for f, t in enumerate(self.trainers):
            state = t.optimizer.state if t.has_optimizer else {}   # none built: a fresh member, no moments
            step = 0.0
            for p, m, v in zip(t.model.parameters(), exp_avg, exp_avg_sq):
                st = state.get(p, {})
                if "exp_avg" in st:
                    m[f] = st["exp_avg"]
                    v[f] = st["exp_avg_sq"]
                    step = float(st["step"])
                else:
                    m[f] = 0.0
                    v[f] = 0.0
            self.optimizer.steps[f] = step

    def sync(self, optimizer: bool = True) -> None:
        """Write RNG and (``optimizer``) optimizer state into the FoldTrainers (before ``state_dict``)."""
        self._give_rng()
        if not optimizer:   # a finished trial's checkpoint holds no moments: no torch AdamW built for it
            return
        exp_avg, exp_avg_sq = self._blocks(self.optimizer.exp_avg), self._blocks(self.optimizer.exp_avg_sq)
        for f, t in enumerate(self.trainers):
            if self.optimizer.steps[f] == 0:
                continue
            for p, m, v in zip(t.model.parameters(), exp_avg, exp_avg_sq):
                t.optimizer.state[p] = {"step": torch.tensor(float(self.optimizer.steps[f])),
                                        "exp_avg": m[f].clone(), "exp_avg_sq": v[f].clone()}

    # ------------------------------------------------------------------ memory layout
    def _gradient_orders(self) -> list[tuple[int, ...]]:
        """Every parameter's dimensions in the memory order (outermost first) autograd gives its
        gradient: one forward and backward of a first batch (its random draws from throw-away
        generators, the buffers put back). A linear weight's gradient comes transposed from the
        batched matmul's backward; laid out likewise in the flat buffer, it is copied there as
        contiguous runs (a transposed copy, or accumulation, of every weight each step cost more
        than the AdamW step itself)."""
        saved = {k: b.clone() for k, b in self.buffers.items()}
        size = int(min(self.batch_size, self.train.lengths.min()))
        rows = torch.as_tensor(self.train.offsets[:, None] + np.arange(size), device=self.device)
        loss, _ = self._losses(None, rows, self._shared())
        grads = torch.autograd.grad(loss.sum(), list(self.params.values()), materialize_grads=True)
        for k, b in self.buffers.items():
            b.copy_(saved[k])
        # a size-1 dimension's stride says nothing: it goes innermost (where it changes no run)
        return [tuple(sorted(range(g.dim() - 1), key=lambda d: -g.stride(d + 1) if g.shape[d + 1] > 1 else 0))
                if g.dim() > 2 else tuple(range(g.dim() - 1)) for g in grads]

    def _blocks(self, flat: Tensor) -> list[Tensor]:
        """Every parameter's ``[n, *shape]`` view of a flat ``[n, P]`` buffer (the parameters, their
        gradients, the optimizer's moments), laid out in its block as :attr:`orders` says."""
        out, off = [], 0
        for p, order in zip(self.params.values(), self.orders):
            shape = p.shape[1:]
            size = shape.numel()
            block = flat[:, off:off + size].view(flat.shape[0], *[shape[d] for d in order])
            out.append(block.permute(0, *[1 + order.index(d) for d in range(len(shape))]))
            off += size
        return out

    # ------------------------------------------------------------------ one step
    def _member_loss(self, params: dict[str, Tensor], buffers: dict[str, Tensor], batch: dict) -> tuple[Tensor, dict]:
        """One member's (loss, parts): the template's forward and loss with the member's tensors."""
        return torch.func.functional_call(self.template, (params, buffers), (Batch(**batch),), tie_weights=False)

    @staticmethod
    def _member_output(output: MemberOutput, params: dict[str, Tensor], buffers: dict[str, Tensor], batch: dict) -> Any:
        """One member's ``output`` (statistics or logits), with the member's tensors."""
        buffers = {k: v for k, v in buffers.items() if k.startswith("model.")}   # not the criterion's
        return torch.func.functional_call(output, (params, buffers), (Batch(**batch),), tie_weights=False)

    def _shared(self) -> dict[str, bool]:
        """Which buffers are equal in every member (passed once, unbatched: forward may branch on them)."""
        n = len(self.trainers)
        return {k: bool(all(torch.equal(b[0], b[f]) for f in range(1, n))) for k, b in self.buffers.items()}

    def validation_probs(self, batch_size: int = 256) -> list[np.ndarray]:
        """Every member's class probabilities on its validation part, as its fold model's
        ``predict_proba`` gives them (to float rounding): vmapped calls of ``batch_size`` positions
        (eval mode, no gradient, no random draw) on the validation parts padded to the longest with
        the member's first row. A sample's logits depend on its own row only (batch norm is refused
        by :func:`~trainables.members.member_template`), so the padding changes no real row."""
        if self.val is None:
            self.val = Rows([t.val_tensors() for t in self.trainers], self.device)
        shared = self._shared()
        n_max = int(self.val.lengths.max())
        chunks = []
        self.template.eval()
        try:
            with torch.no_grad():
                for start in range(0, n_max, batch_size):
                    rows, _ = self.val.padded(start, min(start + batch_size, n_max), self.device)
                    logits = self._vmapped(functools.partial(self._member_output, self.logits), None, rows, shared,
                                           self.val)
                    chunks.append(torch.softmax(logits, dim=-1).cpu())
        finally:
            self.template.train()
        probs = torch.cat(chunks, dim=1)
        return [probs[f, :n].numpy() for f, n in enumerate(self.val.lengths)]

    def _epoch_statistics(self, shared: dict[str, bool]) -> list[dict[str, Tensor]]:
        """Every member's sums of :meth:`~trainables.backbone.Backbone.epoch_statistics` over its whole
        training part: one vmapped call (eval mode, no gradient) on the training parts padded to the
        longest with the member's first row; the padding is left out of the sums."""
        rows, real = self.train.padded(0, int(self.train.lengths.max()), self.device)   # [n, n_max]
        self.template.eval()
        try:
            with torch.no_grad():
                stats = self._vmapped(functools.partial(self._member_output, self.statistics), None, rows, shared)
        finally:
            self.template.train()
        sums = {k: (v.double() * real.view(*real.shape, *[1] * (v.dim() - 2))).sum(1) for k, v in stats.items()}
        return [{k: v[f] for k, v in sums.items()} for f in range(len(self.trainers))]

    def _losses(self, group: np.ndarray | None, rows: Tensor, shared: dict[str, bool]) -> tuple[Tensor, dict]:
        """Per-member (loss [g], parts [g]) of the members ``group`` (None: all) on ``rows`` [g, B]."""
        return self._vmapped(self._member_loss, group, rows, shared)

    def _vmapped(self, fn, group: np.ndarray | None, rows: Tensor, shared: dict[str, bool], part: Rows | None = None):
        """``fn(params, buffers, batch)`` vmapped over the members ``group`` (None: all) on ``rows`` [g, B]
        of ``part`` (default: the training parts)."""
        part = self.train if part is None else part
        index = None if group is None else torch.as_tensor(group, device=self.device)

        def pick(t: Tensor) -> Tensor:
            return t if index is None else t[index]

        members = range(len(self.trainers)) if group is None else group
        # one flat tuple of tensors (vmap's input handling walks a pytree: nested dicts cost more)
        flat = [*(pick(p) for p in self.params.values()),
                *(b[0] if shared[k] else pick(b) for k, b in self.buffers.items()),
                *(x[rows] for x in part.inputs.values()), *(x[rows] for x in part.token_masks.values()),
                part.mask[rows], part.y[rows], part.local[rows], torch.arange(len(members), device=self.device)]
        in_dims = [0] * len(flat)
        for j, k in enumerate(self.buffers, start=len(self.params)):
            in_dims[j] = None if shared[k] else 0
        cuts = np.cumsum([len(self.params), len(self.buffers), len(part.inputs), len(part.token_masks)])

        def member(*t: Tensor):
            batch = {"inputs": dict(zip(part.inputs, t[cuts[1]:cuts[2]])),
                     "token_masks": dict(zip(part.token_masks, t[cuts[2]:cuts[3]])),
                     "mask": t[-4], "y": t[-3], "index": t[-2]}
            with member_index(t[-1]):
                return fn(dict(zip(self._param_keys, t[:cuts[0]])), dict(zip(self.buffers, t[cuts[0]:cuts[1]])), batch)

        with member_generators([self.generators[f] for f in members]):
            return torch.vmap(member, in_dims=tuple(in_dims), randomness="same")(*flat)

    def train_epoch(self) -> list[dict[str, float]]:
        """One epoch of every member; returns each member's parts as ``FoldTrainer.train_epoch`` does."""
        trainers = self.trainers
        n, bs = len(trainers), self.batch_size
        epoch = trainers[0].epoch
        if any(t.epoch != epoch for t in trainers):
            raise RuntimeError("BatchedFolds: the members are at different epochs")
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
        # the epoch's index table, built once: [steps, n, bs] global rows, sizes[s, f] real rows of member f
        table = np.zeros((steps, n, bs), dtype=np.int64)
        sizes = np.zeros((steps, n), dtype=np.int64)
        for f, order in enumerate(orders):
            padded = np.full(steps * bs, self.train.offsets[f], dtype=np.int64)
            padded[:len(order)] = order + self.train.offsets[f]
            table[:, f] = padded.reshape(steps, bs)
            sizes[:, f] = np.clip(len(order) - np.arange(steps) * bs, 0, bs)
        table_t = torch.as_tensor(table, device=self.device)
        shared = self._shared()
        sums: dict[str, Tensor] = defaultdict(lambda: torch.zeros(n, device=self.device))
        params = list(self.params.values())
        for s in range(steps):
            total = None
            for B in np.unique(sizes[s][sizes[s] > 0]):           # one vmapped call per batch size
                group = np.flatnonzero(sizes[s] == B)
                if len(group) == n:
                    loss, parts = self._losses(None, table_t[s, :, :B], shared)
                else:
                    loss, parts = self._losses(group, table_t[s, torch.as_tensor(group, device=self.device), :B], shared)
                total = loss.sum() if total is None else total + loss.sum()   # summed: each member's solo gradient
                idx = None if len(group) == n else torch.as_tensor(group, device=self.device)
                for key, v in {"loss": loss.detach(), **parts}.items():
                    if idx is None:
                        sums[key].add_(v.to(sums[key].dtype), alpha=float(B))
                    else:
                        sums[key].index_add_(0, idx, v.to(sums[key].dtype) * float(B))
            # the gradients as autograd gives them, copied into the flat buffer in their own layout
            for block, g in zip(self._grads, torch.autograd.grad(total, params, materialize_grads=True)):
                block.copy_(g)
            self.optimizer.step(self.grad, sizes[s] > 0)
        self._give_rng()
        out = []
        seen = np.maximum(counts, 1)
        host = {key: v.cpu().double().numpy() for key, v in sums.items()}
        statistics = self._epoch_statistics(shared) if self.template.model.needs_epoch_statistics else None
        for f, t in enumerate(trainers):
            with t._own_rng():
                end = t.model.end_epoch(t.train_data, t.criterion, None if statistics is None else statistics[f])
            t.epoch += 1
            out.append({**{key: float(v[f] / seen[f]) for key, v in host.items()}, "epoch_samples": float(counts[f]), **end})
        return out
