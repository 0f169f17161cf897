"""AlignedFusion's and EMR fusion's own claims on synth-clinic: their ablations, and AlignedFusion's
attribute-missing curves, against the self-attention fusion and concatenation baselines.

Claims tested (seed papers 002 and 003):

* AlignedFusion (Sec. 3.2, Fig. 3, Table 1a/b): best accuracy at every attribute-missing rate when
  the training reports are incomplete (``M-Tr+C-Te``), and accuracy that holds up as the test
  reports lose attributes (``C-Tr+M-Te``); Table 4: without the intermediate token (IT) 2 to 3
  points worse; mask probability p = 0.3 better than 0 and 0.5.
* EMR fusion (Table 3): removing any of alignment, self-attention, residual connection or dynamic
  feature weighting lowers accuracy (alignment and dynamic weighting the most, by 1 to 2 points).

Data: ``synth-clinic:n=600,imbalance=2,unmentioned=0,missing=0`` (every attribute stated and every
modality present, so the attribute-missing rate is the only missingness; imbalance 2 so that
accuracy, the papers' metric, is not dominated by one class), encoded once (reports: the packaged
MiniLM; images: the tiny ResNet for the pooled vector and 4x4 map, RANDOMLY INITIALISED and frozen:
no pretrained tiny image encoder is available offline). Every row trains with the same engine
settings (AdamW lr 1e-3, 40 epochs, batch 32, weight decay 1e-4, plain cross-entropy; untuned, the
model after the last epoch scored), on the same folds and seeds.

* ablations: stratified k-fold CV (seed 0), accuracy and macro F1, mean ± std over folds;
* attribute-missing curves: for each seed a stratified 75/25 hold-out split, the training (or test)
  part's mentioned attributes dropped at the rate (:mod:`trainables.attribute_missing`, seeded);
  accuracy on the test part, mean ± std over seeds. The concatenation baseline reads the report's
  [CLS] vector, not the attribute table, so attribute drops do not reach it: it is the row of a
  model that does not use the attributes at all.

    python benchmarks/fusion_claims.py            # 5 folds; rates 0/0.2/0.5/0.8, 3 seeds, both protocols
    python benchmarks/fusion_claims.py --quick    # smoke run (n=150, 2 folds, 3 epochs, one seed)
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from searches import machine
from token_models_synth import ARMS, common_arguments, engine_config, pm, prepare_run, train_and_score

from trainables.attribute_missing import PROTOCOLS, apply_protocol
from trainables.data import stratified_holdout, stratified_kfold
from trainables.engine import FoldTrainer

ABLATIONS = {
    "AlignedFusion (Table 4)": ("AlignedFusion", "AlignedFusion w/o IT", "AlignedFusion (mask_p 0)",
                                "AlignedFusion (mask_p 0.5)", "self-attention fusion", "concatenation (baseline)"),
    "EMR fusion (Table 3)": ("EMR fusion", "EMR fusion w/o alignment", "EMR fusion w/o self-attention",
                             "EMR fusion w/o residual", "EMR fusion w/o dynamic weighting", "self-attention fusion",
                             "concatenation (baseline)"),
}
CURVE_ARMS = ("AlignedFusion", "AlignedFusion w/o IT", "self-attention fusion", "concatenation (baseline)")
CURVE_PROTOCOLS = ("M-Tr+C-Te", "C-Tr+M-Te")


def ablations(data, base: dict, folds: int, seed: int) -> dict[str, list[dict]]:
    arms = list(dict.fromkeys(a for rows in ABLATIONS.values() for a in rows))
    out: dict[str, list[dict]] = {a: [] for a in arms}
    for k, (tr, va) in enumerate(stratified_kfold(data.labels, folds, seed)):
        train, test = data.take(tr), data.take(va)
        for a in arms:
            r = train_and_score(ARMS[a], base, train, test, seed)
            out[a].append(r)
            print(f"  fold {k} {a}: acc {100 * r['accuracy']:.1f}, macro F1 {100 * r['macro_f1']:.1f} "
                  f"({r['seconds']:.0f}s)", flush=True)
    return out


def train(arm, base: dict, train_part, seed: int) -> FoldTrainer:
    trainer = FoldTrainer(arm.method, {**base, **dict(arm.config), "modalities": list(arm.inputs)}, train_part, seed=seed)
    for _ in range(trainer.epochs):
        trainer.train_epoch()
    return trainer


def curves(data, base: dict, rates: list[float], seeds: list[int], test_fraction: float) -> dict:
    """Test accuracy per protocol, arm and rate. Complete training (``C-Tr+M-Te``, and rate 0 of any
    protocol) is one model per seed and arm, evaluated on every incomplete test part."""
    out = {p: {a: {r: [] for r in rates} for a in CURVE_ARMS} for p in CURVE_PROTOCOLS}
    for seed in seeds:
        tr, te = stratified_holdout(data.labels, test_fraction, seed)
        complete = {}
        for a in CURVE_ARMS:
            t0 = time.perf_counter()
            complete[a] = train(ARMS[a], base, data.take(tr), seed)
            print(f"  seed {seed} complete training {a} ({time.perf_counter() - t0:.0f}s)", flush=True)
        for protocol in CURVE_PROTOCOLS:
            for rate in rates:
                train_part, test_part = apply_protocol(data.take(tr), data.take(te), protocol, rate, seed)
                for a in CURVE_ARMS:
                    retrain = PROTOCOLS[protocol][0] and rate > 0
                    model = train(ARMS[a], base, train_part, seed) if retrain else complete[a]
                    acc = model.evaluate(test_part)["accuracy"]
                    out[protocol][a][rate].append(acc)
                    print(f"  seed {seed} {protocol} {rate:.0%} {a}: acc {100 * acc:.1f}", flush=True)
    return out


def print_ablations(abl: dict, folds: int, setting: str) -> None:
    for title, arms in ABLATIONS.items():
        ref = abl[arms[0]]
        print(f"\n### Ablations, {title}: {folds}-fold CV (seed 0), % mean ± std over folds\n\n{setting}\n")
        print("| model | accuracy | macro F1 | accuracy - full model (paired by fold) |\n|---|---|---|---|")
        for a in arms:
            rs = abl[a]
            diff = np.array([r["accuracy"] for r in rs]) - np.array([r["accuracy"] for r in ref])
            d = "-" if a == arms[0] else f"{100 * diff.mean():+.1f} ± {100 * diff.std(ddof=1) if len(diff) > 1 else 0:.1f}"
            print(f"| {a} | {pm([r['accuracy'] for r in rs])} | {pm([r['macro_f1'] for r in rs])} | {d} |", flush=True)


def print_curves(cur: dict, rates: list[float], seeds: list[int], test_fraction: float, setting: str) -> None:
    for protocol in CURVE_PROTOCOLS:
        print(f"\n### Attribute-missing curve, {protocol}: test accuracy (%), mean ± std over seeds {seeds} "
              f"({test_fraction:.0%} hold-out)\n\n{setting}\n")
        print("| model | " + " | ".join(f"{r:.0%}" for r in rates) + " | rate 0 - largest rate |")
        print("|---|" + "---|" * (len(rates) + 1))
        for a in CURVE_ARMS:
            row = cur[protocol][a]
            drop = np.mean(row[rates[0]]) - np.mean(row[rates[-1]])
            print(f"| {a} | " + " | ".join(pm(row[r]) for r in rates) + f" | {100 * drop:+.1f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synth-clinic:n=600,imbalance=2,unmentioned=0,missing=0")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--rates", default="0,0.2,0.5,0.8")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--quick", action="store_true", help="smoke run: n=150, 2 folds, rates 0 and 0.5, one seed, 3 epochs")
    p.add_argument("--parts", default="ablations,curves", help="which tables: ablations, curves or both")
    p.add_argument("--out", default=None, help="write every figure as JSON here")
    common_arguments(p)
    p.set_defaults(arms=",".join(dict.fromkeys([*CURVE_ARMS, *(a for r in ABLATIONS.values() for a in r)])))
    args = p.parse_args(argv)
    if args.quick:
        args.data, args.folds, args.rates, args.seeds, args.epochs = (
            "synth-clinic:n=150,imbalance=2,unmentioned=0,missing=0", 2, "0,0.5", "0", 3)
    rates = [float(r) for r in args.rates.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    parts = [x.strip() for x in args.parts.split(",")]
    if not parts or any(x not in ("ablations", "curves") for x in parts):
        p.error(f"--parts {args.parts}: choose ablations, curves or both (comma-separated)")
    print(f"machine: {machine()}", flush=True)
    t0 = time.monotonic()
    _, data = prepare_run(p, args)
    base = engine_config(args)
    counts = np.bincount(data.labels, minlength=data.num_classes).tolist()
    setting = (f"{args.data} (class counts {counts}); text {args.text_encoder}, image {args.image_encoder} (random init); "
               f"epochs {args.epochs}, lr {args.lr}, batch {args.batch_size}, weight decay {args.weight_decay}, "
               f"imbalance {args.imbalance}")
    abl: dict = {}
    cur: dict = {}
    if "ablations" in parts:
        print("ablations:", flush=True)
        abl = ablations(data, base, args.folds, 0)
        print_ablations(abl, args.folds, setting)
    if "curves" in parts:
        print("attribute-missing curves:", flush=True)
        cur = curves(data, base, rates, seeds, args.test_fraction)
        print_curves(cur, rates, seeds, args.test_fraction, setting)
    wall = time.monotonic() - t0
    print(f"\nran for {wall / 60:.1f} min on this machine")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "ablations": abl,
                       "curves": {p: {a: {str(r): v for r, v in d.items()} for a, d in arms.items()} for p, arms in cur.items()}},
                      f, indent=1)


if __name__ == "__main__":
    main()
