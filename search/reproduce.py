"""``python -m search.reproduce BUNDLE``: retrain a bundle's model from the bundle alone and check it.

    python -m search.reproduce BUNDLE [--atol 1e-5]

Reads the bundle's ``config.json`` (the full training config: method, data spec, seed, epochs,
every hyperparameter), checks that the data loaded now has the fingerprint the bundle records,
refits the configuration exactly as the search did (:func:`search.handoff.refit.refit`: whole training
part, same seed and epochs) and compares the retrained model with the bundle: the largest weight
difference and the largest probability difference over the training part (and the fixed test part
when there is one), predicted by the retrained trainer and by the bundle through its public
``predict``. Exit code 0 when both are within ``--atol``, 1 otherwise, 2 for unusable input.

On CPU the refit is deterministic, so the differences are 0; GPU kernels may differ in the last
bits, hence the tolerance.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from search.prepare.cli import OneLineParser
from search.prepare.errors import UsageError
from trainables.bundle import Bundle, BundleError, load_bundle
from trainables.data import DataError


@dataclass(frozen=True)
class Reproduction:
    fingerprint_ok: bool
    max_weight_diff: float
    max_prob_diff: float
    samples: int


def reproduce(bundle: Bundle) -> Reproduction:
    from safetensors.torch import load_file

    from search.handoff.models import pyfunc_input
    from search.handoff.refit import refit

    config = dict(bundle.config)
    for key in ("method", "data", "seed", "epochs"):
        if key not in config:
            raise UsageError(f"bundle {bundle.path}: config.json lacks {key!r}; it cannot be retrained")
    fit = refit(config, device="cpu")
    recorded = bundle.metadata.get("data_fingerprint")
    if recorded and recorded != fit.fingerprint:
        raise UsageError(f"--data {config['data']}: fingerprint {fit.fingerprint[:12]} differs from the bundle's "
                         f"{recorded[:12]}; not the data the model was trained on")
    saved = load_file(str(bundle.path / "model.safetensors"))
    state = {k: v.detach().cpu() for k, v in fit.trainer.model.state_dict().items()}
    weight_diff = max((float((state[k].float() - saved[k].float()).abs().max()) for k in saved if saved[k].numel()),
                      default=0.0)
    prob_diff, n = 0.0, 0
    for part in (fit.train, fit.test):
        if part is None:
            continue
        ours = fit.trainer.predict_proba(part)
        theirs = bundle.predict(pyfunc_input(bundle, part))
        prob_diff = max(prob_diff, float(np.abs(ours - theirs).max()))
        n += len(part)
    return Reproduction(recorded is None or recorded == fit.fingerprint, weight_diff, prob_diff, n)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m search.reproduce",
                           description="Retrain a bundle's model from its config and check it matches the bundle.")
    parser.add_argument("bundle", metavar="BUNDLE", help="a bundle folder (python -m search.export)")
    parser.add_argument("--atol", type=float, default=1e-5, help="largest accepted difference (default 1e-5)")
    args = parser.parse_args(argv)
    try:
        bundle = load_bundle(args.bundle)
        if not isinstance(bundle, Bundle):
            raise UsageError(f"bundle {args.bundle}: an ensemble of {len(bundle.members)} members (trainables.ensemble); "
                             "search.reproduce retrains the bundle of one network")
        print(f"retraining {bundle.method} on {bundle.config.get('data')} (seed {bundle.config.get('seed')}, "
              f"{bundle.config.get('epochs')} epochs) ...", flush=True)
        r = reproduce(bundle)
    except (UsageError, BundleError, DataError) as exc:
        print(f"python -m search.reproduce: error: {exc}", file=sys.stderr)
        return 2
    ok = r.max_weight_diff <= args.atol and r.max_prob_diff <= args.atol
    print(f"data fingerprint: {'same' if r.fingerprint_ok else 'DIFFERENT'}; max |weight difference| "
          f"{r.max_weight_diff:.3g}; max |probability difference| {r.max_prob_diff:.3g} over {r.samples} samples: "
          f"{'reproduced' if ok else 'NOT reproduced'} (atol {args.atol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
