"""The dataset of a search as an MLflow dataset input of its parent run (``mlflow.data``).

MLflow identifies a dataset by name and digest; the digest here is the dataset's fingerprint
(the SHA-256 of the raw data as loaded, :meth:`trainables.data.MultimodalDataset.fingerprint`),
cut to the 36 characters MLflow stores, and the whole fingerprint is in the profile and the input
tags. The source is the folder for a dataset read from a folder, else the ``--data`` spec and
the loader that resolves it (a code source: built-in data sets are downloaded and checked by
``trainables.data``). The profile says what a trial trains on: samples, classes, modalities.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset

CONTEXT = "training"
"""The input's ``mlflow.data.context``: the searched (training) part."""
DIGEST_CHARS = 36
"""MLflow's limit on a dataset digest (``mlflow.utils.validation.MAX_DATASET_DIGEST_SIZE``)."""


class ProfiledDataset(MetaDataset):
    """A ``MetaDataset`` (name, digest, source, no data) with a profile."""

    def __init__(self, source: DatasetSource, name: str, digest: str, profile: dict[str, Any]) -> None:
        super().__init__(source=source, name=name, digest=digest)
        self._profile = profile

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile, sort_keys=True)}


def source_of(spec: str) -> DatasetSource:
    """A folder dataset's folder; a built-in one's spec and loader."""
    from trainables.data import DatasetSpec

    folder = DatasetSpec.parse(spec).folder
    if folder is not None:
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        return resolve_dataset_source(str(folder.resolve()))
    return CodeDatasetSource(tags={"fusetune.data": spec, "loader": "trainables.data.load_dataset"})


@dataclass(frozen=True)
class DatasetInfo:
    """What the parent run records of its dataset; plain values (the tracking callback is pickled)."""

    dataset: dict[str, str]
    """``ProfiledDataset.to_dict()``: name, digest, source, source_type, profile."""
    tags: dict[str, str]

    @classmethod
    def of(cls, cfg: Any, data: Any) -> DatasetInfo:
        """From the search options and its :class:`trainables.trial_data.TrialData`."""
        d = data.data
        profile = {
            "fingerprint": data.fingerprint, "training_samples": int(len(d.labels)),
            "classes": list(d.class_names), "class_counts": [int(c) for c in d.class_counts()],
            "modalities": {name: m.kind for name, m in d.modalities.items()},
            "raw_kinds": list(data.raw_kinds),
        }
        ds = ProfiledDataset(source_of(cfg.data), name=cfg.data_name, digest=data.fingerprint[:DIGEST_CHARS],
                             profile=profile)
        return cls(ds.to_dict(), {"mlflow.data.context": CONTEXT, "fusetune.data_fingerprint": data.fingerprint,
                                  "fusetune.data_spec": str(cfg.data)})

    def entity(self) -> Any:
        """The ``mlflow.entities.DatasetInput`` to log (``MlflowClient.log_inputs``)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        d = self.dataset
        return DatasetInput(
            Dataset(name=d["name"], digest=d["digest"], source_type=d["source_type"], source=d["source"],
                    schema=d.get("schema"), profile=d.get("profile")),
            tags=[InputTag(k, v) for k, v in self.tags.items()])
