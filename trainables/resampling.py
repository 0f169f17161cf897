"""Resampling baselines of CLIMD's Table 2 (imbalanced-learn), applied once to a fold's training part.

``RESAMPLERS`` maps the engine's ``imbalance`` option to ``(data, config, seed) -> data``:

- ``undersample``: random undersampling of every class to the minority count
  (``RandomUnderSampler``); the kept samples are the original ones.
- ``smote``: SMOTE (``k_neighbors`` = config ``smote_k``, lowered to minority size - 1) on the
  concatenation of all vector modalities *and* their availability bits. A synthetic sample's
  modality is available when its interpolated availability bit is >= 0.5; otherwise its values
  are zeroed, as for any missing modality. Only vector inputs can be interpolated: a dataset with
  token modalities raises :class:`DataError`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from imblearn.over_sampling import SMOTE
from imblearn.under_sampling import RandomUnderSampler

from trainables.data.dataset import Modality, MultimodalDataset
from trainables.data.errors import DataError

Resampler = Callable[[MultimodalDataset, dict, int], MultimodalDataset]


def undersample(data: MultimodalDataset, config: dict, seed: int) -> MultimodalDataset:
    sampler = RandomUnderSampler(random_state=seed)
    sampler.fit_resample(np.arange(len(data))[:, None], data.labels)
    return data.take(np.sort(sampler.sample_indices_))


def smote(data: MultimodalDataset, config: dict, seed: int) -> MultimodalDataset:
    for m in data.modalities.values():
        if m.kind != "vector":
            raise DataError("config 'imbalance': smote", f"needs vector inputs only, but modality {m.name!r} is {m.kind}")
    counts = data.class_counts()
    k = min(int(config.get("smote_k", 5)), int(counts[counts > 0].min()) - 1)
    if k < 1:
        raise DataError("config 'imbalance': smote", "the smallest class needs at least 2 samples")
    mods = list(data.modalities.values())
    widths = [m.values.shape[1] for m in mods]
    x = np.concatenate([m.values for m in mods] + [np.stack([m.mask for m in mods], 1).astype(np.float32)], axis=1)
    x_new, y_new = SMOTE(k_neighbors=k, random_state=seed).fit_resample(x, data.labels)
    n_new = len(y_new) - len(data)  # imbalanced-learn appends the synthetic rows after the originals
    bounds = np.cumsum([0, *widths])
    modalities: dict[str, Modality] = {}
    for j, m in enumerate(mods):
        synth_values = x_new[len(data):, bounds[j]:bounds[j + 1]].astype(np.float32)
        synth_mask = x_new[len(data):, bounds[-1] + j] >= 0.5
        synth_values[~synth_mask] = 0.0
        modalities[m.name] = Modality(m.name, m.kind, np.concatenate([m.values, synth_values]),
                                      np.concatenate([m.mask, synth_mask]), m.feature_names)
    return MultimodalDataset(
        name=data.name,
        ids=np.concatenate([data.ids, [f"smote-{i}" for i in range(n_new)]]),
        labels=y_new,
        class_names=list(data.class_names),
        modalities=modalities,
    )


RESAMPLERS: dict[str, Resampler] = {"undersample": undersample, "smote": smote}
