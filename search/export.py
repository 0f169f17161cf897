"""``python -m search.export``: the best models of a search as self-contained bundles with a model card.

    python -m search.export --name STUDY [--storage DIR] [--top-k K] --dest DIR
    python -m search.export --model NAME [--alias champion | --version N] [--tracking-uri URI] --dest DIR
    python -m search.export --name STUDY --dest DIR --sign-key KEY     # and sign each bundle (Ed25519)

Each selected configuration becomes ``DEST/<study>-<rank>-<trial>/`` (``DEST/<model>-v<version>/``
from the registry): a :mod:`trainables.bundle` (safetensors weights, full config, preprocessing
statistics, class names, modality names and dimensions, encoder identities, SHA-256 manifest) plus
``MODEL_CARD.md`` and its machine-readable twin ``model_card.json``, the fusetune wheel it was
made with (``fusetune-<version>-py3-none-any.whl``, built from the code that is running, with
``pip wheel --no-deps``) and ``requirements.txt`` (exact pins of what loading and predicting
import), all covered by the manifest. ``pip install -r requirements.txt`` then
``pip install --no-deps fusetune-*.whl`` is all a downstream machine needs (the card says so)::

    from trainables.bundle import load_bundle
    probs = load_bundle("DEST/tiny-1-1bc01323").predict(frame)   # missing modalities: NaN / absent columns

The deployable model is the one the search registered (:mod:`search.handoff.registration`: the configuration
refitted on the whole training part with the trial's seed and epochs). It is taken, in order, from
the study's ``models/<rank>-<trial>/`` folder, from the MLflow registry of the search (the version
tagged with the trial), or refitted now the same way.

An ensemble (:mod:`trainables.ensemble`, registered by :mod:`search.handoff.registration`) is exported the same
way, its card listing the members, their weights and confirmed figures and the ensemble's scores
on the fixed test part (there are no fold models of an ensemble to evaluate); when every member is
a reference model the card says so in plain words.

The model card's evidence comes from the trial's own fold models (its last checkpoint, or retrained
from the config when the checkpoint is gone), each evaluated on its validation fold: metrics mean ±
std over folds as the search reported them, per-class precision/recall and the confusion matrix of
the out-of-fold predictions (pooled over folds), and the metric as each modality goes missing at
0, 30, 60 and 90 % (:mod:`search.robustness`). When the dataset has a fixed test part, the
refitted model's scores on it (computed once at registration, never used for selection) are listed
too. The card ends with the command that reruns the search and the one that retrains this model
from the bundle alone and checks it (:mod:`search.reproduce`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.handoff.model_card import card_facts, ensemble_card_facts, render_card, render_ensemble_card
from search.prepare.cli import DEFAULT_STORAGE, OneLineParser, add_storage_option
from search.prepare.errors import UsageError
from search.robustness import DEFAULT_RATES, FoldModels, evaluate, fold_models, parse_rates
from search.select.results import SEARCH_FILE, StudyResults, TrialResult, load_study
from search.trust.credentials import private_outputs, refuse_credentials
from trainables.bundle import ENSEMBLE, copy_bundle, load_bundle, sign_bundle, verify_bundle
from trainables.data import DataError
from trainables.metrics import METRICS
from trainables.signing import key_id, load_private_key

CARD = "MODEL_CARD.md"
REQUIREMENTS = "requirements.txt"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
CARD_JSON = "model_card.json"
MODELS_DIR = "models"
"""Where the search may keep its registered bundles (``log_top_models(bundle_dir=<study>/models)``)."""


# ----------------------------------------------------------------------------- what is exported
@dataclass
class Selected:
    rank: int
    trial: TrialResult
    study: StudyResults | None
    bundle: Path
    """A verified bundle folder holding the deployable model."""
    origin: str
    """Where the bundle came from (study folder, ``models:/NAME/VERSION``, refitted now)."""
    search_options: dict[str, Any] | None
    """The search's options (``search.json`` or the parent run's params), for the reproduce command."""
    out_name: str


def _search_options(study: StudyResults) -> dict[str, Any] | None:
    """``search.json`` of the study (None if it has none); one-line :class:`UsageError` naming the
    file when it is not a JSON object."""
    path = study.folder / SEARCH_FILE
    if not path.is_file():
        return None
    try:
        options = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise UsageError(f"{path}: not valid JSON ({reason}); expected the search's options as a JSON object") from None
    if not isinstance(options, dict):
        raise UsageError(f"{path}: expected the search's options as a JSON object, found a JSON "
                         f"{type(options).__name__}")
    return options


def _tracking_uri(study: StudyResults, options: dict[str, Any] | None) -> str | None:
    """The search's MLflow store, if it exists: its ``--tracking-uri`` or the default SQLite file."""
    from search.tracking.store import default_tracking_uri

    if options and options.get("tracking_uri"):
        return str(options["tracking_uri"])
    db = study.folder.parent / "mlflow.db"
    return default_tracking_uri(study.folder.parent) if db.is_file() else None


def _registered_bundle(uri: str, study: StudyResults, trial_id: str, tmp: Path) -> tuple[Path, str] | None:
    """The bundle registered for ``trial_id`` of ``study`` in the MLflow store ``uri``, downloaded."""
    from mlflow.tracking import MlflowClient

    from search.tracking.queue import fast_http
    from search.tracking.store import SEARCH_NAME_TAG

    try:
        with fast_http(10.0):
            client = MlflowClient(uri)
            versions = client.search_model_versions(f"tags.`fusetune.trial_id` = '{trial_id}'")
            versions = [v for v in versions if client.get_run(v.run_id).data.tags.get(SEARCH_NAME_TAG) == study.name]
            if not versions:
                return None
            v = max(versions, key=lambda v: int(v.version))
            return _download(uri, v.name, str(v.version), tmp), f"models:/{v.name}/{v.version}"
    except Exception as exc:  # noqa: BLE001 - the registry is one of three sources
        print(f"note: MLflow store {uri} not usable for trial {trial_id} ({' '.join(str(exc).split())[:200]})",
              file=sys.stderr)
        return None


def _download(uri: str, name: str, version: str, tmp: Path) -> Path:
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                    dst_path=str(tmp / f"{name}-v{version}"))
    finally:
        mlflow.set_tracking_uri(previous)
    bundle = Path(local) / "artifacts" / "bundle"
    if not bundle.is_dir():
        raise UsageError(f"model {name} version {version}: its artifacts hold no fusetune bundle (artifacts/bundle)")
    return bundle


def _refit_bundle(study: StudyResults, trial: TrialResult, rank: int, tmp: Path) -> Path:
    """Refit the configuration as :func:`search.handoff.registration.log_top_models` does and bundle it."""
    from search.handoff.refit import refit
    from trainables.bundle import save_bundle

    print(f"trial {trial.trial_id}: no registered bundle found; refitting it on the whole training part", file=sys.stderr)
    fit = refit(trial.config)
    metadata = {
        "space": study.space, "data": fit.train.name, "data_spec": trial.config.get("data"),
        "data_fingerprint": fit.fingerprint, "trial_id": trial.trial_id, "rank": rank,
        "refit": "whole training part, same seed and epochs",
        "cv_metrics": {k: v for k, v in trial.last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        "test_metrics": fit.test_metrics,
    }
    return save_bundle(tmp / f"refit-{trial.trial_id}", fit.trainer, data=fit.train, metadata=metadata)


def select_from_study(study: StudyResults, top_k: int, tmp: Path) -> list[Selected]:
    """The study's best ``top_k`` finished trials (the search's own ranking), each with its bundle."""
    ranked = study.ranked()
    if not ranked:
        raise UsageError(f"--name {study.name}: no trial finished all its epochs; nothing to export")
    options = _search_options(study)
    uri = _tracking_uri(study, options)
    out = []
    for rank, trial in enumerate(ranked[:top_k], 1):
        kept = sorted((study.folder / MODELS_DIR).glob(f"*-{trial.trial_id}"))
        if kept:
            bundle, origin = kept[0], f"study folder {kept[0]}"
        else:
            found = _registered_bundle(uri, study, trial.trial_id, tmp) if uri else None
            bundle, origin = found if found else (_refit_bundle(study, trial, rank, tmp), "refitted by search.export")
        out.append(Selected(rank, trial, study, bundle, origin, options, f"{study.name}-{rank}-{trial.trial_id}"))
    return out


def select_from_registry(model: str, alias: str | None, version: str | None, tracking_uri: str, tmp: Path,
                         storage: str | None) -> Selected:
    """A registered model version; its trial's study is used when its folder is reachable."""
    from mlflow.tracking import MlflowClient

    from search.tracking.store import PARENT_RUN_TAG, TRIAL_ID_TAG, check_tracking_uri

    check_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        v = client.get_model_version(model, version) if version else client.get_model_version_by_alias(model, alias)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own exception types
        what = f"version {version}" if version else f"alias {alias!r}"
        raise UsageError(f"--model {model}: no {what} in {tracking_uri} ({' '.join(str(exc).split())[:160]})") from None
    bundle = _download(tracking_uri, model, str(v.version), tmp)
    run = client.get_run(v.run_id)
    trial_id = v.tags.get(TRIAL_ID_TAG) or run.data.tags.get(TRIAL_ID_TAG, "?")
    parent = client.get_run(run.data.tags[PARENT_RUN_TAG]) if PARENT_RUN_TAG in run.data.tags else None
    options = dict(parent.data.params) if parent else None
    study = None
    if options:
        folder = Path(storage or options.get("storage", "")).expanduser() / options.get("name", "")
        if folder.is_dir() and options.get("name"):
            try:
                study = load_study(folder.name, folder.parent)
                options = _search_options(study) or options
            except UsageError:
                study = None
    if study is not None and any(t.trial_id == trial_id for t in study.trials):
        trial = study.trial(trial_id)
    else:  # the study folder is elsewhere: the run's final metrics and the bundle's full config
        from search.handoff.registration import CONFIG_TAG

        single = not (bundle / ENSEMBLE).is_file()  # an ensemble's config: the search's fixed keys
        config = json.loads((bundle / "config.json").read_text()) if single else json.loads(v.tags.get(CONFIG_TAG, "{}"))
        trial = TrialResult(trial_id, "TERMINATED", config, [{**run.data.metrics, "final": True}], None)
    rank = int(v.tags.get("fusetune.rank", 1))
    return Selected(rank, trial, study, bundle, f"models:/{model}/{v.version}", options, f"{model}-v{v.version}")


# ----------------------------------------------------------------------------- hand-off installability
SOURCE_PARTS = ("pyproject.toml", "README.md", "search", "spaces", "trainables")
"""What ``pip wheel`` needs of the checkout (pyproject's packages and readme)."""


def fusetune_wheel(out_dir: Path) -> Path | None:
    """Build the wheel of the fusetune code that is running (its checkout, copied aside so the build
    leaves nothing in it) into ``out_dir``; None when fusetune does not run from a checkout."""
    import shutil
    import subprocess

    import trainables

    root = Path(trainables.__file__).resolve().parents[1]
    if not all((root / part).exists() for part in SOURCE_PARTS):
        return None
    with tempfile.TemporaryDirectory(prefix="fusetune-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for part in SOURCE_PARTS:
            if (root / part).is_dir():
                shutil.copytree(root / part, src / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(root / part, src / part)
        out_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                               "--quiet", "-w", str(out_dir), str(src)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UsageError(f"building the fusetune wheel for the bundle failed: {tail[0]}")
    return next(iter(sorted(out_dir.glob("fusetune-*.whl"))))


def bundle_requirements(bundle_path: Path) -> list[str]:
    """Exact pins of what loading and predicting with the bundle imports (MLflow left out: a bundle
    does not need it); the same list the registered pyfunc logs (:func:`search.handoff.models.pip_requirements`)."""
    from search.handoff.models import pip_requirements

    return [r for r in pip_requirements(load_bundle(bundle_path)) if not r.startswith("mlflow==")]


def install_lines(wheel: str | None, requirements: list[str]) -> list[str]:
    torch = next((r for r in requirements if r.startswith("torch==")), "torch")
    lines = [f"pip install {torch} --index-url {CPU_TORCH_INDEX}   # machines without a GPU: the CPU build first",
             f"pip install -r {REQUIREMENTS}"]
    if wheel:
        lines.append(f"pip install --no-deps {wheel}          # this bundle's fusetune code (all of fusetune: drop --no-deps)")
    return lines


# ----------------------------------------------------------------------------- export
def _fold_models(sel: Selected) -> FoldModels:
    """The trial's fold models; a checkpoint that cannot be restored (corrupt, truncated, another
    model's) is one line naming it rather than a traceback."""
    try:
        return fold_models(sel.trial, log=lambda s: print(s, file=sys.stderr))
    except UsageError:  # a checkpoint that cannot be read, named by fold_models
        raise
    except Exception as exc:  # noqa: BLE001 - torch, safetensors and the model raise many types
        ckpt = sel.trial.checkpoint
        if ckpt is None:
            raise
        detail = " ".join(str(exc).split())[:160]
        raise UsageError(f"checkpoint {ckpt} of trial {sel.trial.trial_id}: cannot be restored "
                         f"({type(exc).__name__}: {detail}); delete that folder to have the export retrain "
                         "the trial's folds from its config") from None


def export_one(sel: Selected, dest: Path, *, rates: tuple[float, ...], seed: int, overwrite: bool,
               wheel: Path | None = None) -> Path:
    manifest = verify_bundle(sel.bundle)
    metric = sel.study.metric if sel.study else str(sel.trial.config.get("metric") or "macro_f1")
    metric = metric if metric in METRICS else "macro_f1"
    if ENSEMBLE in manifest["files"]:  # no fold models of an ensemble: members, weights, test part
        facts = ensemble_card_facts(sel, metric, dest / sel.out_name)
        render = render_ensemble_card
    else:
        models = _fold_models(sel)
        rows = evaluate(models, metric, rates, seed=seed)
        facts = card_facts(sel, models, rows, metric, dest / sel.out_name)
        render = render_card
    requirements = bundle_requirements(sel.bundle)
    facts["install"] = {"wheel": wheel.name if wheel else None, "requirements": requirements, "python": platform.python_version(),
                        "commands": install_lines(wheel.name if wheel else None, requirements)}
    extra: dict[str, str | bytes] = {REQUIREMENTS: "\n".join(requirements) + "\n"}
    if wheel is not None:
        extra[wheel.name] = wheel.read_bytes()
    extra.update({CARD: render(facts), CARD_JSON: json.dumps(facts, indent=1, default=str)})
    return copy_bundle(sel.bundle, dest / sel.out_name, overwrite=overwrite, extra_files=extra)


def parser() -> OneLineParser:
    p = OneLineParser(prog="python -m search.export",
                      description="Export the best models of a search as self-contained bundles with a model card.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--name", help="the study (search name under --storage)")
    src.add_argument("--model", help="a registered model name (MLflow Model Registry)")
    add_storage_option(p, default=None)  # --model: None = the search's own, from its MLflow run
    p.add_argument("--top-k", type=int, default=1, help="with --name: export the best K configurations (default 1)")
    p.add_argument("--alias", default=None, help="with --model: the version's alias (default champion)")
    p.add_argument("--version", default=None, help="with --model: a version number instead of an alias")
    p.add_argument("--tracking-uri", default=None,
                   help="with --model: the MLflow store (default sqlite:///<storage>/mlflow.db)")
    p.add_argument("--dest", required=True, metavar="DIR", help="where the bundles are written")
    p.add_argument("--rates", default=",".join(f"{r:g}" for r in DEFAULT_RATES),
                   help="missing-modality rates for the card (default 0,0.3,0.6,0.9)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random masking (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace bundles already in --dest")
    p.add_argument("--sign-key", default=None, metavar="KEY",
                   help="sign each bundle with this Ed25519 private key (PEM; python -m trainables.signing keygen)")
    return p


def check_options(args: argparse.Namespace) -> None:
    """The combinations the parser cannot refuse by itself, in one line."""
    refuse_credentials("--tracking-uri", args.tracking_uri)
    if args.top_k < 1:
        raise UsageError(f"--top-k {args.top_k}: must be at least 1")
    if args.model is None and (args.alias or args.version or args.tracking_uri):
        raise UsageError("--alias, --version and --tracking-uri go with --model")
    if args.alias and args.version:
        raise UsageError("--alias and --version: give one of them")


def selected_models(args: argparse.Namespace, tmp: Path) -> list[Selected]:
    """The search's top-k (``--name``) or the registered version (``--model``), fetched into ``tmp``."""
    if args.name:
        return select_from_study(load_study(args.name, args.storage or DEFAULT_STORAGE), args.top_k, tmp)
    from search.tracking.store import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri(args.storage or DEFAULT_STORAGE)
    return [select_from_registry(args.model, args.alias or "champion", args.version, uri, tmp, args.storage)]


@private_outputs()  # what it writes is readable by the user only (FUSETUNE_UMASK)
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    dest = Path(args.dest).expanduser()
    try:
        check_options(args)
        sign_key = load_private_key(args.sign_key) if args.sign_key else None
        rates = parse_rates(args.rates)
        with tempfile.TemporaryDirectory(prefix="fusetune-export-") as tmp:
            selected = selected_models(args, Path(tmp))
            for sel in selected:
                if (dest / sel.out_name).exists() and not args.overwrite:
                    raise UsageError(f"--dest {dest}: {sel.out_name} exists (add --overwrite to replace it)")
            wheel = fusetune_wheel(Path(tmp) / "wheel")
            if wheel is None:
                print("python -m search.export: fusetune does not run from a checkout; the bundles carry no wheel "
                      "(the model card names the fusetune version to install)", file=sys.stderr)
            written = [export_one(s, dest, rates=rates, seed=args.seed, overwrite=args.overwrite, wheel=wheel)
                       for s in selected]
            for path in written if sign_key is not None else []:
                sign_bundle(path, sign_key)
    except (UsageError, DataError) as exc:  # BundleError and SigningError are DataErrors
        print(f"python -m search.export: error: {exc}", file=sys.stderr)
        return 2
    for sel, path in zip(selected, written):
        print(f"{path}  (rank {sel.rank}, trial {sel.trial.trial_id}, model from {sel.origin})")
    print("load: from trainables.bundle import load_bundle; load_bundle(PATH).predict(frame)")
    if sign_key is not None:
        print(f"signed with key {key_id(sign_key.public_key())}: load_bundle(PATH, public_key=\"KEY.pub\") checks it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
