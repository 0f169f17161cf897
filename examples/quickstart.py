"""A first search from Python, end to end, in a few minutes on 2 cores.

    FUSETUNE_DATA_DIR=../shared/data python examples/quickstart.py

Tunes the early-fusion baseline on breast-tcga (8 trials x 20 epochs, 3-fold CV), confirms the
best on fresh folds next to a logistic regression and a random forest, registers the champion in
the MLflow store under ./fusetune_results, then loads it back as a downstream team would and
predicts class probabilities for the held-out test patients.
"""

from __future__ import annotations

from pathlib import Path

from search import run_search
from search.handoff.models import load_model, pyfunc_input
from trainables.bundle import load_bundle
from trainables.data import load_dataset


def main() -> None:
    result = run_search(space="baseline", data="breast-tcga", num_samples=8, epochs=20, folds=3,
                        confirm_repeats=1, top_k=1, storage="fusetune_results")
    print("\nsearch folder:", result.folder)
    print("champion config:", {k: result.best_config[k] for k in ("lr", "hidden", "dropout", "imbalance")})
    print(result.confirmation[["candidate", "search_macro_f1", "confirmed_macro_f1", "p_value"]].to_string(index=False))
    if result.model_uri is None:
        return
    # mlflow.pyfunc.load_model after checking the download (manifest, entry file, code) before it runs
    model = load_model(result.model_uri, tracking_uri="sqlite:///fusetune_results/mlflow.db")
    bundle = load_bundle(sorted(Path(result.folder, "models").iterdir())[0])  # the same model, as a bundle folder
    test = load_dataset("breast-tcga").split_part("test")
    probs = model.predict(pyfunc_input(bundle, test))
    print(f"\n{result.model_uri} ({result.alias}) on {len(test)} test patients:")
    print(probs.head())


if __name__ == "__main__":
    main()
