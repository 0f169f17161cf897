"""AlignedFusion's attribute-missing protocols (seed paper 002, Sec. 3.2), as evaluation options.

A report's attribute table (input ``<report>.attributes``, token_mask = mentioned) is made
incomplete at a chosen rate by turning mentioned attributes into unmentioned ones: token_mask
False, token zeroed (what the encoders give for an unmentioned attribute) and, when present, the
state in ``meta["attribute_states"]`` set to -1.

Rate: the fraction of the part's *mentioned* attribute cells (over samples that have the report)
that are dropped; exactly ``round(rate * n_mentioned)`` cells, drawn uniformly without replacement
by a seeded generator, so a (dataset, rate, seed) gives one reproducible incomplete table.

Protocols (paper's names): ``M-Tr+C-Te`` missing train / complete test, ``C-Tr+M-Te`` complete
train / missing test, ``M-Tr+M-Te`` both missing (the paper trains at 50% and tests across rates;
here both parts use the given rate, call :func:`drop_attributes` directly for other mixes).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from trainables.data.dataset import MultimodalDataset
from trainables.data.errors import DataError

STATES_KEY = "attribute_states"
UNMENTIONED = -1

PROTOCOLS: dict[str, tuple[bool, bool]] = {
    "M-Tr+C-Te": (True, False),
    "C-Tr+M-Te": (False, True),
    "M-Tr+M-Te": (True, True),
}
"""Protocol name -> (drop attributes in the training part, drop attributes in the test part)."""


def attribute_input(data: MultimodalDataset) -> str:
    """Name of the dataset's single ``<report>.attributes`` input."""
    names = [k for k, m in data.modalities.items() if m.kind == "tokens" and k.endswith(".attributes")]
    if len(names) != 1:
        raise DataError(data.name, "expected one '<report>.attributes' token input to drop attributes from, "
                                   f"found {names or 'none'}")
    return names[0]


def drop_attributes(data: MultimodalDataset, rate: float, seed: int, input_name: str | None = None) -> MultimodalDataset:
    """A copy of ``data`` in which a fraction ``rate`` of the mentioned attributes are unmentioned."""
    if not 0.0 <= rate <= 1.0:
        raise DataError(f"attribute missing rate {rate}", "expected a fraction in [0, 1]")
    name = input_name or attribute_input(data)
    m = data.modalities[name]
    if m.token_mask is None:
        raise DataError(f"{data.name}/{name}", "has no token_mask (which attributes are mentioned)")
    mentioned = np.argwhere(m.token_mask & m.mask[:, None])
    k = int(round(rate * len(mentioned)))
    drop = mentioned[np.random.default_rng(seed).choice(len(mentioned), size=k, replace=False)]
    values, token_mask = m.values.copy(), m.token_mask.copy()
    values[drop[:, 0], drop[:, 1]] = 0.0
    token_mask[drop[:, 0], drop[:, 1]] = False
    out = data.with_modalities({**data.modalities, name: replace(m, values=values, token_mask=token_mask)})
    if STATES_KEY in data.meta:
        states = np.array(data.meta[STATES_KEY], copy=True)
        states[drop[:, 0], drop[:, 1]] = UNMENTIONED
        out.meta = {**data.meta, STATES_KEY: states}
    return out


def apply_protocol(train: MultimodalDataset, test: MultimodalDataset, protocol: str, rate: float,
                   seed: int) -> tuple[MultimodalDataset, MultimodalDataset]:
    """The (train, test) pair of an attribute-missing protocol at ``rate``; seeded per part."""
    if protocol not in PROTOCOLS:
        raise DataError(f"attribute missing protocol {protocol!r}", f"expected one of {', '.join(PROTOCOLS)}")
    drop_train, drop_test = PROTOCOLS[protocol]
    if drop_train:
        train = drop_attributes(train, rate, seed)
    if drop_test:
        test = drop_attributes(test, rate, seed + 1)
    return train, test
