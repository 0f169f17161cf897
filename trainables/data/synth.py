"""``synth-clinic``: a seeded generator of multimodal patients for controlled experiments.

``load_dataset("synth-clinic:n=600,classes=3,imbalance=10,missing=0.3,unmentioned=0.3,noise=0.5,seed=0")``

Every parameter is optional; the values above are the defaults.

=============  =========================================  ====================================
parameter      meaning                                    allowed
=============  =========================================  ====================================
n              number of patients                         integer >= 10
classes        number of diagnostic classes               integer in [2, 10]
imbalance      largest / smallest class size              number >= 1 (1 = balanced)
missing        per-modality missing rate                  number in [0, 0.6]
unmentioned    rate of report attributes left unstated    number in [0, 1]
noise          noise level of every modality              number in [0, 10]
seed           seed of everything                         integer >= 0
=============  =========================================  ====================================

Modalities: ``image`` (image, float32 [N, 1, 32, 32] in [0, 1]: a lesion-like blob on a noisy
background), ``report`` (text: a short free-text report) and ``ehr`` (vector, 16 named
clinical-looking features). ``meta["attributes"]`` is the int8 [N, A] table the report was
written from (1 positive, 0 negative, -1 unmentioned; A and the order as in
``trainables/resources/synth_clinic_attributes.yaml``); a sample whose report is missing has a
row of -1 (a missing report states nothing). ``meta["typicality"]`` is each patient's latent
typicality ``t`` (below), kept for analysing curricula; it is not a model input. There is no
fixed split: searches use stratified k-fold or hold-out.

How the signal is planted
-------------------------
1. **Classes.** Class sizes are geometric, ``n_k ∝ imbalance^(-k/(C-1))`` for k = 0..C-1
   (class 0 largest), rounded by largest remainder so that they sum to ``n``; the ratio
   largest/smallest is ``imbalance`` up to rounding. Samples are shuffled.
2. **Patients.** Each patient i has a class y_i, a *typicality* t_i = 0.15 + 0.85·Beta(3, 1.5)
   (how far the patient sits from the class-neutral centre: low t = atypical, hard case) and a
   class-independent *shared latent* s_i ~ N(0, I_2) that moves all three modalities together
   (so a missing modality is partly predictable from the others, as in real patients).
3. **Each modality sees only part of the class.** Every modality m has one prototype per class
   (random, well-spread unit vectors in its own latent space, scaled by a per-modality
   separation), but for C >= 3 each modality *confuses one pair of classes per three*: class c
   with c mod 3 = m takes the prototype of class c+1 (mod C) in modality m (m = 0 image,
   1 report, 2 EHR). With C = 3: the image cannot tell class 0 from 1, the report cannot tell
   1 from 2, the EHR cannot tell 2 from 0. Every pair of classes is confused by at most one
   modality, so any two modalities together identify the class and no single one does. With
   C = 2 no pair can be hidden; there the separations are halved, so that each modality alone
   is clearly weaker than all three together.
   The latent code of modality m is ``z_m = t_i · sep_m · P_m[g_m(y_i)] + L_m s_i + noise · eps``.
4. **Image** (``z`` in 3-D): the lesion's size (semi-axis 3.5 to 9.5 px), elongation (aspect
   1 to 2.5) and contrast (peak 0.3 to 0.9) are sigmoids of the three latent coordinates: these
   carry the class. Rotation, position jitter, the number and phase of border lobes are pure
   nuisance; border irregularity and background brightness follow the shared latent. Pixel
   noise has standard deviation 0.02 + 0.04·noise.
5. **Report** (``z`` in A-D, one logit per attribute, bias -0.3): each attribute is positive
   with probability sigmoid(logit) -- the class shifts the probabilities, the Bernoulli draw
   adds noise -- then left unmentioned with probability ``unmentioned``. The text is written
   from this table with varied phrasing: the attribute's name or a synonym, positive value
   words ("noted", "observed", ...), negation cues ("no", "without", "negative for",
   "no evidence of", "free of", "absent", "not seen"), single or listed mentions in random
   order, between a neutral opening and closing sentence. No other word depends on the class.
6. **EHR** (``z`` in 4-D): 10 of the 16 features are random unit-norm projections of ``z``
   plus measurement noise (0.5·noise) mapped to clinical-looking ranges; the other 6 follow only
   the shared latent and noise (distractors).
7. **Missing modalities.** Each modality is missing for exactly round(missing·n) patients,
   drawn at random with no patient left without any modality (missing <= 0.6 keeps that
   feasible). Missing values are zeros / "" behind the availability mask.
The random streams of the world (prototypes), patients, images, reports and missingness are
separate children of ``seed``, so e.g. changing ``missing`` leaves the patients unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources

import numpy as np
import yaml

from trainables.data import DatasetSpec, register_dataset
from trainables.data.dataset import Modality, MultimodalDataset
from trainables.data.errors import DataError
from trainables.data.params import known_options

IMAGE_SIZE = 32
EHR_FEATURES: tuple[tuple[str, float, float], ...] = (
    # name, centre, spread: the first 10 carry the EHR latent, the last 6 are distractors
    ("crp_mg_l", 5.0, 3.0), ("ldh_u_l", 200.0, 50.0), ("wbc_10e9_l", 7.0, 2.0),
    ("hemoglobin_g_dl", 13.5, 1.5), ("platelets_10e9_l", 250.0, 60.0), ("albumin_g_dl", 4.0, 0.5),
    ("s100b_ug_l", 0.10, 0.04), ("lesion_growth_mm_yr", 1.0, 0.8), ("itch_score", 2.0, 1.5),
    ("sun_exposure_h_wk", 10.0, 5.0),
    ("age_years", 55.0, 15.0), ("bmi", 26.0, 4.0), ("systolic_bp", 128.0, 15.0),
    ("heart_rate", 75.0, 12.0), ("creatinine_mg_dl", 1.0, 0.25), ("glucose_mg_dl", 100.0, 20.0),
)
N_EHR_INFORMATIVE = 10
LATENT_DIM = {"image": 3, "ehr": 4}  # the report's latent has one coordinate per attribute
SEPARATION = {"image": 2.5, "report": 5.0, "ehr": 2.0}
TWO_CLASS_SCALE = 0.5  # with C = 2 no pair can be hidden: weaker prototypes keep each modality insufficient
SHARED_LOADING = 0.5
ATTRIBUTE_BIAS = -0.3


# ---------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class SynthParams:
    n: int = 600
    classes: int = 3
    imbalance: float = 10.0
    missing: float = 0.3
    unmentioned: float = 0.3
    noise: float = 0.5
    seed: int = 0

    def spec(self) -> str:
        return "synth-clinic:" + ",".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self))


@dataclass(frozen=True)
class _Rule:
    cast: type
    ok: Callable[[float], bool]
    expected: str


RULES: dict[str, _Rule] = {
    "n": _Rule(int, lambda v: v >= 10, "an integer >= 10"),
    "classes": _Rule(int, lambda v: 2 <= v <= 10, "an integer in [2, 10]"),
    "imbalance": _Rule(float, lambda v: 1.0 <= v < math.inf, "a number >= 1"),
    "missing": _Rule(float, lambda v: 0.0 <= v <= 0.6, "a number in [0, 0.6]"),
    "unmentioned": _Rule(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "noise": _Rule(float, lambda v: 0.0 <= v <= 10.0, "a number in [0, 10]"),
    "seed": _Rule(int, lambda v: v >= 0, "an integer >= 0"),
}


def parse_params(spec: DatasetSpec) -> SynthParams:
    """``synth-clinic:n=600,imbalance=10`` -> :class:`SynthParams`; a one-line DataError for any bad item."""
    values: dict[str, float | int] = {}
    for key, raw in known_options(spec, RULES).items():
        where = f"--data synth-clinic parameter {key!r}"
        rule = RULES[key]
        try:
            number = float(raw)
            value = rule.cast(number)
            if rule.cast is int and value != number:
                raise ValueError
        except ValueError:
            raise DataError(where, f"expected {rule.expected}, got {raw!r}") from None
        if not rule.ok(value):
            raise DataError(where, f"expected {rule.expected}, got {raw!r}")
        values[key] = value
    return SynthParams(**values)


@register_dataset("synth-clinic")
def load_synth_clinic(spec: DatasetSpec) -> MultimodalDataset:
    return generate(parse_params(spec))


# ---------------------------------------------------------------------------- vocabulary
@dataclass(frozen=True)
class Attribute:
    name: str
    synonyms: tuple[str, ...]
    positive: tuple[str, ...]
    negative: tuple[str, ...]


@lru_cache(maxsize=1)
def attribute_vocabulary() -> tuple[Attribute, ...]:
    """The report attributes of ``trainables/resources/synth_clinic_attributes.yaml``, in order."""
    text = resources.files("trainables.resources").joinpath("synth_clinic_attributes.yaml").read_text()
    entries = yaml.safe_load(text)["attributes"]
    return tuple(
        Attribute(e["name"], tuple(e.get("synonyms", ())), tuple(e["values"]["positive"]), tuple(e["values"]["negative"]))
        for e in entries
    )


# ---------------------------------------------------------------------------- generator
def class_sizes(n: int, classes: int, imbalance: float) -> np.ndarray:
    """Geometric class sizes n_k ∝ imbalance^(-k/(C-1)) summing to n (largest remainder rounding)."""
    w = imbalance ** (-np.arange(classes) / (classes - 1))
    raw = n * w / w.sum()
    sizes = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - sizes), kind="stable")
    sizes[order[: n - sizes.sum()]] += 1
    return sizes


def visible_groups(classes: int, modality_index: int) -> np.ndarray:
    """Prototype index of each class in modality m: class c with c mod 3 = m borrows class c+1's."""
    g = np.arange(classes)
    if classes >= 3:
        hidden = g % 3 == modality_index
        g[hidden] = (g[hidden] + 1) % classes
    return g


def _prototypes(rng: np.random.Generator, classes: int, dim: int) -> np.ndarray:
    """Unit-norm class prototypes [C, dim]: orthonormal (Gram-Schmidt) when C <= dim, random directions otherwise."""
    a = rng.standard_normal((classes, dim))
    for k in range(min(classes, dim)):
        a[k] -= a[:k].T @ (a[:k] @ a[k])
        a[k] /= np.linalg.norm(a[k])
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def generate(p: SynthParams) -> MultimodalDataset:
    sizes = class_sizes(p.n, p.classes, p.imbalance)
    if sizes.min() < 2:
        raise DataError(
            f"--data {p.spec()}",
            f"n={p.n} is too small for classes={p.classes}, imbalance={p.imbalance:g}: "
            f"the smallest class would have {sizes.min()} samples",
        )
    vocab = attribute_vocabulary()
    n_attr = len(vocab)
    world, patients, images, reports, missing = (np.random.default_rng(s) for s in np.random.SeedSequence(p.seed).spawn(5))

    # world: prototypes, shared-latent loadings, EHR projections (depend on seed and classes only)
    dims = {"image": LATENT_DIM["image"], "report": n_attr, "ehr": LATENT_DIM["ehr"]}
    protos = {m: _prototypes(world, p.classes, d) for m, d in dims.items()}
    loadings = {m: SHARED_LOADING * world.standard_normal((d, 2)) / math.sqrt(2) for m, d in dims.items()}
    ehr_proj = world.standard_normal((N_EHR_INFORMATIVE, dims["ehr"]))
    ehr_proj /= np.linalg.norm(ehr_proj, axis=1, keepdims=True)
    ehr_shared = world.standard_normal((len(EHR_FEATURES) - N_EHR_INFORMATIVE, 2)) / math.sqrt(2)

    # patients
    labels = patients.permutation(np.repeat(np.arange(p.classes), sizes))
    typicality = 0.15 + 0.85 * patients.beta(3.0, 1.5, p.n)
    shared = patients.standard_normal((p.n, 2))
    scale = TWO_CLASS_SCALE if p.classes == 2 else 1.0
    latent = {}
    for idx, m in enumerate(dims):
        group = visible_groups(p.classes, idx)[labels]
        latent[m] = (
            typicality[:, None] * scale * SEPARATION[m] * protos[m][group]
            + shared @ loadings[m].T
            + p.noise * patients.standard_normal((p.n, dims[m]))
        )

    image = render_images(latent["image"], shared, p.noise, images)
    attributes = _draw_attributes(latent["report"], p.unmentioned, reports)
    ehr = _ehr_features(latent["ehr"], shared, ehr_proj, ehr_shared, p.noise, patients)

    masks = draw_missing(p.n, 3, p.missing, missing)
    image[~masks[:, 0]] = 0.0
    attributes[~masks[:, 1]] = -1
    texts = np.array([write_report(a, vocab, reports) if ok else "" for a, ok in zip(attributes, masks[:, 1])], dtype=object)
    ehr[~masks[:, 2]] = 0.0

    modalities = {
        "image": Modality("image", "image", image, masks[:, 0]),
        "report": Modality("report", "text", texts, masks[:, 1]),
        "ehr": Modality("ehr", "vector", ehr, masks[:, 2], [f[0] for f in EHR_FEATURES]),
    }
    return MultimodalDataset(
        name=p.spec(),
        ids=[f"synth{i:05d}" for i in range(p.n)],
        labels=labels,
        class_names=[f"class_{k}" for k in range(p.classes)],
        modalities=modalities,
        split=None,
        meta={"attributes": attributes, "attribute_names": [a.name for a in vocab], "typicality": typicality.astype(np.float32)},
    )


def render_images(z: np.ndarray, shared: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Lesion-like blobs [N, 1, 32, 32]: size, elongation and contrast from ``z``; the rest nuisance.

    Computed in float64 and rounded once to float32, so that last-bit differences between CPUs'
    vectorised sin/exp do not reach the stored values (and the fingerprint)."""
    n = len(z)
    a = 3.5 + 6.0 * _sigmoid(z[:, 0])  # major semi-axis (px)
    b = a / (1.0 + 1.5 * _sigmoid(z[:, 1]))  # minor semi-axis
    peak = 0.3 + 0.6 * _sigmoid(z[:, 2])
    theta = rng.uniform(0.0, np.pi, n)
    centre = np.clip((IMAGE_SIZE - 1) / 2 + 1.5 * rng.standard_normal((n, 2)), 11.0, 20.0)
    lobes = rng.integers(3, 7, n)
    phase = rng.uniform(0.0, 2 * np.pi, n)
    irregular = 0.05 + 0.15 * _sigmoid(shared[:, 0])
    background = 0.08 + 0.06 * _sigmoid(shared[:, 1])

    col = lambda v: v[:, None, None]  # noqa: E731  (per-sample scalar -> broadcast over the grid)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)
    dx, dy = xx[None] - col(centre[:, 0]), yy[None] - col(centre[:, 1])
    cos, sin = col(np.cos(theta)), col(np.sin(theta))
    u, v = (cos * dx + sin * dy) / col(a), (-sin * dx + cos * dy) / col(b)
    rho = np.sqrt(u * u + v * v)
    edge = 1.0 + col(irregular) * np.sin(col(lobes) * np.arctan2(v, u) + col(phase))
    blob = _sigmoid((edge - rho) * col(a) / 0.8)  # soft border about 0.8 px wide
    pixel_sd = 0.02 + 0.04 * noise
    img = col(background) + (col(peak) - col(background)) * blob + pixel_sd * rng.standard_normal((n, IMAGE_SIZE, IMAGE_SIZE))
    return np.clip(img, 0.0, 1.0).astype(np.float32)[:, None]


def _draw_attributes(z: np.ndarray, unmentioned: float, rng: np.random.Generator) -> np.ndarray:
    positive = rng.random(z.shape) < _sigmoid(ATTRIBUTE_BIAS + z)
    states = positive.astype(np.int8)
    states[rng.random(z.shape) < unmentioned] = -1
    return states


def _ehr_features(z, shared, proj, shared_proj, noise, rng) -> np.ndarray:
    informative = z @ proj.T
    distractor = shared @ shared_proj.T
    raw = np.concatenate([informative, distractor], axis=1) + 0.5 * noise * rng.standard_normal((len(z), len(EHR_FEATURES)))
    centre = np.array([f[1] for f in EHR_FEATURES])
    spread = np.array([f[2] for f in EHR_FEATURES])
    return (centre + spread * raw).astype(np.float32)


def draw_missing(n: int, modalities: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Bool availability [n, M]: each modality missing for exactly round(rate·n) samples, none all-missing.

    Draws i.i.d. with the per-modality rate q that gives an expected rate of ``rate`` after
    reviving one random modality of all-missing samples (q - q^M/M = rate), then moves the
    counts to exactly round(rate·n) per modality.
    """
    target = round(rate * n)
    q = rate
    for _ in range(50):  # fixed point of q = rate + q^M / M (contraction for rate <= 0.6)
        q = rate + q**modalities / modalities
    avail = rng.random((n, modalities)) >= q
    empty = np.flatnonzero(~avail.any(axis=1))
    avail[empty, rng.integers(0, modalities, len(empty))] = True
    for m in range(modalities):
        gap = target - int((~avail[:, m]).sum())
        if gap > 0:  # remove more, only where another modality remains
            cand = np.flatnonzero(avail[:, m] & (avail.sum(axis=1) >= 2))
            avail[rng.choice(cand, gap, replace=False), m] = False
        elif gap < 0:
            avail[rng.choice(np.flatnonzero(~avail[:, m]), -gap, replace=False), m] = True
    return avail


# ---------------------------------------------------------------------------- report text
SITES = ("back", "left forearm", "right shoulder", "scalp", "chest", "left thigh", "abdomen", "right calf")
OPENINGS = (
    "Dermoscopy of a pigmented lesion on the {site}.",
    "Clinical and dermoscopic examination of a lesion on the {site}.",
    "Lesion on the {site} examined under dermoscopy.",
    "Referral for a changing mole on the {site}.",
)
CLOSINGS = ("", "Clinical correlation recommended.", "Follow-up advised.", "Compared with prior images where available.")
POSITIVE_ONE = ("{t} {v}.", "Findings include {t}.", "{t}: {v}.", "Shows {t}.")
POSITIVE_MANY = ("Findings include {ts}.", "{ts} are {v}.")
NEGATIVE_ONE = ("No {t}.", "Without {t}.", "Negative for {t}.", "{t} {nv}.", "{t}: {nv}.", "No evidence of {t}.", "Free of {t}.")
NEGATIVE_MANY = ("No {ts_or}.", "Negative for {ts_or}.", "Without {ts_or}.", "No evidence of {ts_or}.")


def _join(terms: list[str], last: str) -> str:
    return terms[0] if len(terms) == 1 else ", ".join(terms[:-1]) + f" {last} " + terms[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def write_report(states: np.ndarray, vocab: tuple[Attribute, ...], rng: np.random.Generator) -> str:
    """A short report stating each mentioned attribute as present (1) or absent (0); -1 is left out."""
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    order = rng.permutation(len(vocab))
    term = {i: vocab[i].name if rng.random() < 0.5 else pick(vocab[i].synonyms or (vocab[i].name,)) for i in order}
    pos = [i for i in order if states[i] == 1]
    neg = [i for i in order if states[i] == 0]
    sentences = [pick(OPENINGS).format(site=pick(SITES))]
    body: list[str] = []
    for group, polarity in ((pos, 1), (neg, 0)):
        while group:
            k = 1 if len(group) == 1 or rng.random() < 0.6 else int(rng.integers(2, min(3, len(group)) + 1))
            chunk, group = group[:k], group[k:]
            terms = [term[i] for i in chunk]
            if polarity == 1 and k == 1:
                s = pick(POSITIVE_ONE).format(t=terms[0], v=pick(vocab[chunk[0]].positive))
            elif polarity == 1:
                s = pick(POSITIVE_MANY).format(ts=_join(terms, "and"), v=pick(("noted", "seen", "observed", "present")))
            elif k == 1:
                s = pick(NEGATIVE_ONE).format(t=terms[0], nv=pick(vocab[chunk[0]].negative))
            else:
                s = pick(NEGATIVE_MANY).format(ts_or=_join(terms, "or"))
            body.append(_cap(s))
    rng.shuffle(body)
    sentences += body
    closing = pick(CLOSINGS)
    if closing:
        sentences.append(closing)
    return " ".join(sentences)
