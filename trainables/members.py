"""Random draws of stacked members: a method's own module run for n members at once under
``torch.vmap`` (:mod:`trainables.batched`), every member drawing the numbers it draws when it
trains alone.

Under ``torch.vmap`` a random op draws either the same numbers for every member
(``randomness="same"``) or one block for all members from one generator (``"different"``); neither
is member f's own stream, so neither gives the fold models of per-fold training. Here a random draw
that must stay per member is drawn member by member, from the member's own generator
(:func:`member_generators`), with the shape the member's solo forward draws, so on CPU a member
sees the same numbers as when it trains alone (on a GPU the per-fold path uses the fused dropout
kernel, whose draws differ: the same distribution, not the same numbers). Two ways:

- :class:`MemberDropout` (a stacked run's template module has every ``nn.Dropout`` replaced by it,
  :func:`member_template`): draws the n members' masks into one plain ``[n, ...]`` tensor and
  picks the member's row with the member's index (:func:`member_index`, a vmapped input), which
  costs one indexing op. Outside a stacked run it is ``nn.Dropout``.
- :func:`per_member`: turns a random function ``fn(x, rate, generator)`` whose draws depend on
  the values of ``x`` (OmniFuse's simulated missing patterns, rejection sampling:
  :func:`trainables.baseline.drop_modalities`) into a custom op (``torch.library.custom_op``)
  whose vmap rule (``register_vmap``) calls ``fn`` once per member on that member's rows, with
  its generator; outside vmap it is ``fn`` with torch's default generator, so per-fold training
  is unchanged. (A custom op's round trip under vmap costs about twice the indexing op above,
  ~100 vs ~50 microseconds per call on CPU besides the draw itself: hence dropout's own way.)

A stacked run calls vmap with ``randomness="same"``: both ways draw inside vmap from explicit
generators into unbatched tensors, which only that mode allows. A random op of a module that is
not routed through this file would then draw the same numbers for every member;
:func:`member_template` refuses the modules known to do that (attention dropout inside
``nn.MultiheadAttention``), and every method that batches its folds has a per-fold equality test
(``tests/test_batched.py``).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

_GENERATORS: contextvars.ContextVar[Sequence[torch.Generator] | None] = contextvars.ContextVar(
    "fusetune_member_generators", default=None)
_MEMBER: contextvars.ContextVar[Tensor | None] = contextvars.ContextVar("fusetune_member_index", default=None)


@contextlib.contextmanager
def member_generators(generators: Sequence[torch.Generator]) -> Iterator[None]:
    """The generators of the members of the vmapped call(s) inside the block, in member order."""
    token = _GENERATORS.set(list(generators))
    try:
        yield
    finally:
        _GENERATORS.reset(token)


@contextlib.contextmanager
def member_index(member: Tensor) -> Iterator[None]:
    """Inside the vmapped function: ``member``, the vmapped ``arange(n)`` (each member's position)."""
    token = _MEMBER.set(member)
    try:
        yield
    finally:
        _MEMBER.reset(token)


def _generators(n: int) -> Sequence[torch.Generator | None]:
    gens = _GENERATORS.get()
    if gens is None:   # vmapped outside a stacked run: every member in turn from the default generator
        return [None] * n
    if len(gens) != n:
        raise RuntimeError(f"member random draw: vmap over {n} members, {len(gens)} member generators set")
    return gens


def _member_rule(fn: Callable[[Tensor, float, torch.Generator | None], Tensor]):
    def rule(info, in_dims, x: Tensor, rate: float):
        x = x.movedim(in_dims[0], 0)  # x is batched: vmap calls the rule only then
        return torch.stack([fn(x[f], rate, g) for f, g in enumerate(_generators(info.batch_size))]), 0
    return rule


def per_member(name: str) -> Callable[[Callable[[Tensor, float, torch.Generator | None], Tensor]],
                                      Callable[[Tensor, float], Tensor]]:
    """Decorator: ``fn(x, rate, generator) -> Tensor`` (a fresh tensor, never ``x`` itself) as the
    custom op ``name`` ``(x, rate) -> Tensor``: outside vmap ``fn(x, rate, None)`` (torch's default
    generator); under vmap ``fn`` once per member with the member's generator."""
    def wrap(fn):
        def impl(x: Tensor, rate: float) -> Tensor:
            return fn(x, rate, None)

        impl.__name__, impl.__doc__ = fn.__name__, fn.__doc__
        op = torch.library.custom_op(name, impl, mutates_args=())
        op.register_vmap(_member_rule(fn))
        return op
    return wrap


class MemberDropout(nn.Dropout):
    """``nn.Dropout`` whose mask a stacked member draws from its own generator: what
    ``torch.nn.functional.dropout`` multiplies a CPU input by (``at::native::_dropout_impl``:
    bernoulli(1 - p) into a tensor of the input's shape, divided by 1 - p), drawn for every member
    in member order, the member's row picked by :func:`member_index`. p = 0 and eval mode draw
    nothing and return the input; p = 1 draws nothing and returns zeros (as ``F.dropout``)."""

    def forward(self, x: Tensor) -> Tensor:
        member = _MEMBER.get()
        if member is None or not self.training or self.p == 0.0:
            return super().forward(x)
        if self.p == 1.0:
            return x * 0.0
        gens = _GENERATORS.get()
        noise = torch.empty((len(gens), *x.shape), dtype=x.dtype, device=x.device)
        for f, g in enumerate(gens):
            noise[f].bernoulli_(1 - self.p, generator=g)
        return x * noise.div_(1 - self.p)[member]


def member_template(module: nn.Module) -> nn.Module:
    """A copy of ``module`` to run stacked (``torch.func.functional_call`` under vmap): every
    ``nn.Dropout`` a :class:`MemberDropout`. Raises ``ValueError`` for a module whose random draws or
    state updates cannot be kept per member: attention dropout inside ``nn.MultiheadAttention``
    (drawn inside the attention kernel), batch norm (updates its running statistics in forward)."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.MultiheadAttention) and sub.dropout > 0:
            raise ValueError(f"{name}: nn.MultiheadAttention draws its attention dropout inside the attention kernel, "
                             "not per stacked member")
        if isinstance(sub, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)):
            raise ValueError(f"{name}: batch norm updates running statistics in forward, not per stacked member")
        if isinstance(sub, (nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
            raise ValueError(f"{name}: {type(sub).__name__} has no per-member draw")
    template = copy.deepcopy(module)
    for sub in list(template.modules()):
        for child_name, child in list(sub.named_children()):
            if type(child) is nn.Dropout:
                setattr(sub, child_name, MemberDropout(child.p))
    return template
