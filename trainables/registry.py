"""Registry of the model families: name -> class, and the encoder representations it consumes.

A method class subclasses :class:`trainables.backbone.Backbone` and names its frozen config
dataclass as ``Config`` (defined in the method's own file: the single home of its hyperparameters,
their defaults and where each comes from); it is built as ``cls.from_config(spec, config)``, which
takes the keys its ``Config`` declares from the flat trial config.

Adding a method: a module with the class and its ``Config``, one :func:`register_method` line, and
a space (:mod:`spaces`); ``tests/test_config.py`` does it with a toy method.

``representations`` says which encoder outputs the method reads for raw modalities: ``text`` may
give ``sentence`` (vector: the checkpoint's declared sentence embedding), ``cls`` (vector: the
[CLS] state), ``tokens`` (token sequence) or ``attributes`` (one token per report attribute);
``image`` may give ``pooled`` (vector), ``map`` (spatial feature-map tokens) or ``patches`` (ViT
patch tokens). Vector modalities (omics, EHR tables) are used as they are.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from trainables.backbone import Backbone


@dataclass(frozen=True)
class MethodSpec:
    name: str
    target: str  # "module:Class"
    representations: dict[str, tuple[str, ...]] = field(default_factory=dict)
    description: str = ""
    batches_folds: bool = False
    """True: the folds of a trial train as one batched model (:class:`trainables.batched.BatchedFolds`:
    the method's own module under ``torch.vmap``, which needs a forward and loss without Python
    control flow on per-fold tensors or data-dependent shapes); False: one after the other (the
    registration says why)."""

    def load(self) -> type[Backbone]:
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)

    @property
    def config_class(self) -> type:
        """The method's config dataclass (``Config`` of its class)."""
        return self.load().Config


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    METHODS[spec.name] = spec
    return spec


register_method(MethodSpec(
    "baseline", "trainables.baseline:EarlyFusion",
    {"text": ("sentence",), "image": ("pooled",)},
    "early fusion: modality MLP encoders, concatenation, classifier (CLIMD/OmniFuse baseline)",
    batches_folds=True,
))
register_method(MethodSpec(
    "omnifuse", "trainables.omnifuse:OmniFuse",
    {"text": ("sentence",), "image": ("pooled",)},
    "OmniFuse: CRA imputation, DWFuse, TLA",
    batches_folds=True,
))
# alignedfusion and selfattn train their folds one after the other: nn.MultiheadAttention draws its
# attention dropout inside the attention kernel (no per-fold draw under vmap, so batched folds would
# not equal per-fold training; trainables.members.member_template refuses it); alignedfusion's l_rec
# (reconstruction_loss) also has data-dependent shapes (torch.unique of each batch's value tokens).
register_method(MethodSpec(
    "alignedfusion", "trainables.alignedfusion:AlignedFusion",
    {"text": ("attributes",), "image": ("patches",)},
    "AlignedFusion: attribute tokens, intermediate-token fusion, masked token reconstruction",
))
register_method(MethodSpec(
    "selfattn", "trainables.alignedfusion:SelfAttentionFusion",
    {"text": ("attributes",), "image": ("patches",)},
    "plain self-attention fusion over the joint token set (AlignedFusion's comparison baseline)",
))
register_method(MethodSpec(
    "emrfusion", "trainables.emrfusion:EMRFusion",
    {"text": ("cls", "tokens"), "image": ("pooled", "map")},
    "EMR fusion: alignment, attention, residual, dynamic weighting, orthogonality loss",
    batches_folds=True,
))


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]
