"""Gated promotion of the registered ``champion`` (``--promote better|always|never``).

A downstream team loads ``models:/<name>@champion``; a 5-epoch smoke search must not replace a
tuned model it uses. With ``better`` (the default) a search's best new version gets ``champion``
only if

- no version of the registered name has the alias yet, or
- the champion was trained on data with another fingerprint (a different data set: nothing to
  compare), or
- the new model's confirmed figure beats the champion's *on the same fresh folds*: the champion's
  recorded figure when it was confirmed under the same :class:`search.select.verdict.Scheme`, else the
  champion's configuration is retrained on this search's fresh folds in its confirmation stage
  (candidate ``champion:v<N>``).

Otherwise the new version gets ``challenger`` and the search says in one line why the champion
stayed. ``always`` moves the alias to every search's best (the behaviour before gating);
``never`` leaves it where it is (the new version is the challenger; the first version of a name
still becomes champion, as there is nothing to keep).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from mlflow.tracking import MlflowClient

from search.handoff.registration import CHAMPION, CONFIG_TAG, ENSEMBLE_TAG
from search.prepare.objective import Objective

CHALLENGER = "challenger"
# the policies (--promote better|always|never) are named, with their help, in search.prepare.registry_names.PROMOTE_POLICIES
FINGERPRINT_TAG = "fusetune.data_fingerprint"
SCHEME_TAG = "fusetune.confirm_scheme"


def confirmed_tag(metric: str) -> str:
    return f"confirmed_{metric}"


@dataclass(frozen=True)
class Incumbent:
    """The version holding ``champion`` before this search."""

    version: str
    fingerprint: str | None
    scheme: str | None
    confirmed: dict[str, float]      # metric -> confirmed figure recorded on the version
    config: dict[str, Any] | None    # its full trial config (to retrain it on new fresh folds)
    ensemble: bool = False           # an ensemble (ENSEMBLE_TAG): compared by its recorded confirmed figure under
                                     # the same scheme, never retrained as one config on other fresh folds

    @property
    def candidate_name(self) -> str:
        return f"champion:v{self.version}"


def incumbent(client: MlflowClient, name: str) -> Incumbent | None:
    """The current champion of registered model ``name``, or None."""
    try:
        v = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # noqa: BLE001 - no such model or no such alias: MLflow raises RESOURCE_DOES_NOT_EXIST
        return None
    tags = dict(v.tags or {})
    confirmed = {}
    for key, value in tags.items():
        if key.startswith("confirmed_"):
            with contextlib.suppress(ValueError):
                confirmed[key[len("confirmed_"):]] = float(value)
    config = None
    if CONFIG_TAG in tags:
        with contextlib.suppress(json.JSONDecodeError):
            config = json.loads(tags[CONFIG_TAG])
    fingerprint = tags.get(FINGERPRINT_TAG)
    if fingerprint is None and v.run_id:  # a version registered before gating: its trial run's tag
        with contextlib.suppress(Exception):
            fingerprint = client.get_run(v.run_id).data.tags.get("data_fingerprint")
    return Incumbent(str(v.version), fingerprint, tags.get(SCHEME_TAG), confirmed, config, ENSEMBLE_TAG in tags)


def needs_retrain(inc: Incumbent | None, policy: str, fingerprint: str, scheme_key: str, metric: str) -> bool:
    """Whether the confirmation stage must retrain the incumbent to compare on the same fresh folds."""
    if inc is None or policy != "better" or inc.fingerprint != fingerprint:
        return False
    return not (inc.scheme == scheme_key and metric in inc.confirmed) and inc.config is not None and not inc.ensemble


@dataclass(frozen=True)
class Decision:
    alias: str        # CHAMPION or CHALLENGER
    reason: str       # one line


def decide(policy: str, inc: Incumbent | None, *, fingerprint: str, metric: str, mode: str,
           new_value: float | None, incumbent_value: float | None) -> Decision:
    """``new_value``/``incumbent_value``: the confirmed figures on the same fresh folds (None when
    not confirmed)."""
    if inc is None:
        return Decision(CHAMPION, f"no {CHAMPION} existed")
    if policy == "always":
        return Decision(CHAMPION, f"--promote always (replaces v{inc.version})")
    if policy == "never":
        return Decision(CHALLENGER, f"--promote never: {CHAMPION} stays v{inc.version}")
    if inc.fingerprint != fingerprint:
        return Decision(CHAMPION, f"v{inc.version} was trained on other data (fingerprint "
                                  f"{(inc.fingerprint or '?')[:12]} vs {fingerprint[:12]})")
    if new_value is None:
        return Decision(CHALLENGER, f"{CHAMPION} stays v{inc.version}: the new model has no confirmed {metric} "
                                    "(--confirm-repeats 0) to show it is better")
    if incumbent_value is None:
        return Decision(CHALLENGER, f"{CHAMPION} stays v{inc.version}: it could not be re-scored on this "
                                    "search's fresh folds (no config recorded or its confirmation failed)")
    better = Objective(metric, mode).better(new_value, incumbent_value)
    if better:
        return Decision(CHAMPION, f"confirmed {metric} {new_value:.4f} beats v{inc.version}'s {incumbent_value:.4f} "
                                  "on the same fresh folds")
    return Decision(CHALLENGER, f"{CHAMPION} stays v{inc.version}: its confirmed {metric} {incumbent_value:.4f} "
                                f"is not beaten by the new model's {new_value:.4f} on the same fresh folds")


def apply(client: MlflowClient, name: str, version: str, decision: Decision, parent_run_id: str | None) -> None:
    client.set_registered_model_alias(name, decision.alias, version)
    if parent_run_id:
        client.set_tag(parent_run_id, f"fusetune.{decision.alias}", f"models:/{name}/{version}")
        client.set_tag(parent_run_id, "fusetune.promotion", decision.reason)
