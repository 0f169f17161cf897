"""Token models on synth-clinic: k-fold macro F1 of AlignedFusion and EMR fusion against
single-modality models, the plain concatenation (early-fusion) model and self-attention fusion.

synth-clinic (images, free-text reports, EHR table) is encoded once: reports with the packaged
MiniLM (``minilm``: [CLS] vector, word tokens, one [CLS] token per report attribute), images with
the tiny ResNet (``resnet-tiny``: pooled vector and 4x4 feature map; RANDOMLY INITIALISED and
frozen, there is no pretrained tiny image encoder offline). Each row then trains one method on
the inputs it reads (config ``modalities``), every row with the same engine settings (AdamW, lr,
epochs, batch size, criterion), on the same stratified folds and seed, untuned; the model after
the last epoch is scored on the held-out fold (no early stopping on the fold).

Rows: single-modality and concatenation models are the early-fusion ``baseline`` restricted to
``image.pooled`` / ``report.cls`` / ``ehr`` / all three; ``selfattn`` and ``alignedfusion`` read
``report.attributes`` + ``image.map`` + ``ehr`` (rows at paper defaults, plus the w/o IT ablation
and mask_p = 0 and 0.5, the paper's Table 4); ``emrfusion`` (all switches on, and without alignment) reads ``report.cls`` +
``report.tokens`` + ``image.pooled`` + ``image.map`` + ``ehr``; its rows without one of the four
modules of the paper's Table 3 are the ablations. Prints a Markdown table (mean ±
std over the folds) and, with ``--out``, writes the per-fold figures as JSON.

    python benchmarks/token_models_synth.py                       # 5 folds, 40 epochs, lr 1e-3
    python benchmarks/token_models_synth.py --imbalance weighted_ce
    python benchmarks/token_models_synth.py --quick               # 2 folds, 3 epochs, n=150 (smoke run)
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from dataclasses import dataclass

import numpy as np
import torch

from trainables.data import load_dataset, stratified_kfold
from trainables.data.dataset import MultimodalDataset
from trainables.encoders import encode_dataset
from trainables.engine import FoldTrainer

REPRESENTATIONS = {"report": ("cls", "tokens", "attributes"), "image": ("pooled", "map")}


@dataclass(frozen=True)
class Arm:
    method: str
    inputs: tuple[str, ...]
    config: tuple[tuple[str, object], ...] = ()


TOKEN_INPUTS = ("report.attributes", "image.map", "ehr")
EMR_INPUTS = ("report.cls", "report.tokens", "image.pooled", "image.map", "ehr")
ARMS: dict[str, Arm] = {
    "image only (baseline)": Arm("baseline", ("image.pooled",)),
    "report only (baseline)": Arm("baseline", ("report.cls",)),
    "EHR only (baseline)": Arm("baseline", ("ehr",)),
    "concatenation (baseline)": Arm("baseline", ("report.cls", "image.pooled", "ehr")),
    "self-attention fusion": Arm("selfattn", TOKEN_INPUTS),
    "AlignedFusion": Arm("alignedfusion", TOKEN_INPUTS),
    "AlignedFusion w/o IT": Arm("alignedfusion", TOKEN_INPUTS, (("intermediate_token", False),)),
    "AlignedFusion (mask_p 0)": Arm("alignedfusion", TOKEN_INPUTS, (("mask_p", 0.0),)),
    "AlignedFusion (mask_p 0.5)": Arm("alignedfusion", TOKEN_INPUTS, (("mask_p", 0.5),)),
    "EMR fusion": Arm("emrfusion", EMR_INPUTS),
    "EMR fusion w/o alignment": Arm("emrfusion", EMR_INPUTS, (("alignment", False),)),
    "EMR fusion w/o self-attention": Arm("emrfusion", EMR_INPUTS, (("self_attention", False),)),
    "EMR fusion w/o residual": Arm("emrfusion", EMR_INPUTS, (("residual", False),)),
    "EMR fusion w/o dynamic weighting": Arm("emrfusion", EMR_INPUTS, (("dynamic_weighting", False),)),
}


def encode_synth(spec: str, text_encoder: str, image_encoder: str, cache_dir: str | None) -> MultimodalDataset:
    """Load a synth-clinic spec and encode its report and image (cached)."""
    data = load_dataset(spec)
    return encode_dataset(data, REPRESENTATIONS, text_encoder=text_encoder, image_encoder=image_encoder, cache_dir=cache_dir)


def engine_config(args: argparse.Namespace) -> dict:
    return {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "weight_decay": args.weight_decay,
            "imbalance": args.imbalance}


def train_and_score(arm: Arm, base: dict, train: MultimodalDataset, test: MultimodalDataset, seed: int) -> dict:
    """Train one arm for the configured epochs and score the final model on ``test``."""
    config = {**base, **dict(arm.config), "modalities": list(arm.inputs)}
    t0 = time.perf_counter()
    trainer = FoldTrainer(arm.method, config, train, test, seed=seed)
    for _ in range(trainer.epochs):
        trainer.train_epoch()
    metrics = trainer.evaluate()
    return {"macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"], "seconds": time.perf_counter() - t0}


def pm(values: list[float], scale: float = 100.0) -> str:
    v = np.asarray(values) * scale
    return f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.1f}"


def prepare_run(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list[str], MultimodalDataset]:
    """The rows asked for by ``--arms`` (unknown -> usage error), torch threads, and the encoded data."""
    arms = [a.strip() for a in args.arms.split(",")]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"--arms: unknown row {unknown[0]!r}; known: {', '.join(ARMS)}")
    torch.set_num_threads(args.threads)
    logging.getLogger("trainables.encoders").setLevel(logging.ERROR)
    return arms, encode_synth(args.data, args.text_encoder, args.image_encoder, args.cache_dir)


def common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-encoder", default="minilm")
    p.add_argument("--image-encoder", default="resnet-tiny")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: $FUSETUNE_CACHE_DIR or ~/.cache/fusetune/features)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--imbalance", default="none", help="engine criterion / resampler for every row")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synth-clinic", help="synth-clinic spec, e.g. synth-clinic:n=600,seed=0")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="folds and every model's initialisation")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated row names")
    p.add_argument("--quick", action="store_true", help="smoke run: n=150, 2 folds, 3 epochs")
    p.add_argument("--out", default=None, help="write per-fold results as JSON here")
    common_arguments(p)
    args = p.parse_args(argv)
    if args.quick:
        args.data, args.folds, args.epochs = "synth-clinic:n=150", 2, 3
    arms, data = prepare_run(p, args)
    folds = stratified_kfold(data.labels, args.folds, args.seed)
    base = engine_config(args)
    results: dict[str, list[dict]] = {a: [] for a in arms}
    for k, (tr, va) in enumerate(folds):
        train, test = data.take(tr), data.take(va)
        for a in arms:
            r = train_and_score(ARMS[a], base, train, test, args.seed)
            results[a].append(r)
            print(f"fold {k} {a}: macro F1 {100 * r['macro_f1']:.1f}, acc {100 * r['accuracy']:.1f} "
                  f"({r['seconds']:.0f}s)", flush=True)

    counts = np.bincount(data.labels, minlength=data.num_classes).tolist()
    print(f"\n{args.data} (class counts {counts}), {args.folds}-fold CV seed {args.seed}; text {args.text_encoder}, "
          f"image {args.image_encoder} (random init); epochs {args.epochs}, lr {args.lr}, batch {args.batch_size}, "
          f"weight decay {args.weight_decay}, imbalance {args.imbalance}; {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s)\n")
    print("| model | method | inputs | macro F1 (%) | accuracy (%) | s / fold |")
    print("|---|---|---|---|---|---|")
    for a in arms:
        rs = results[a]
        print(f"| {a} | {ARMS[a].method} | {', '.join(ARMS[a].inputs)} | {pm([r['macro_f1'] for r in rs])} | "
              f"{pm([r['accuracy'] for r in rs])} | {np.mean([r['seconds'] for r in rs]):.0f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
