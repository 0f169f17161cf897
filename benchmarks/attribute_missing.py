"""AlignedFusion vs. plain self-attention fusion across report-attribute missing rates (seed paper
002, Sec. 3.2 / Table 1a), in the missing-train / complete-test protocol by default.

Data: synth-clinic with every attribute stated and every modality present
(``unmentioned=0,missing=0``; ``imbalance=2`` so that accuracy, the paper's metric, is not
dominated by one class), reports encoded with the packaged MiniLM, images with the tiny ResNet
(RANDOMLY INITIALISED, frozen). For each seed: a stratified 75/25 hold-out split (seeded), the
training part's mentioned attributes dropped at the rate (:mod:`trainables.attribute_missing`,
seeded), the models trained with the same engine settings and scored by accuracy on the test
part (complete, or also dropped for the other protocols). Prints a Markdown table: accuracy mean
± std over the seeds per rate.

    python benchmarks/attribute_missing.py                            # M-Tr+C-Te, rates 0/10/30/50%, 3 seeds
    python benchmarks/attribute_missing.py --protocol C-Tr+M-Te
    python benchmarks/attribute_missing.py --quick                    # smoke run
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from token_models_synth import ARMS, common_arguments, engine_config, pm, prepare_run, train_and_score

from trainables.attribute_missing import PROTOCOLS, apply_protocol
from trainables.data import stratified_holdout

ROWS = ("AlignedFusion", "self-attention fusion", "AlignedFusion (mask_p 0)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synth-clinic:n=600,imbalance=2,unmentioned=0,missing=0")
    p.add_argument("--protocol", default="M-Tr+C-Te", choices=list(PROTOCOLS))
    p.add_argument("--rates", default="0,0.1,0.3,0.5")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--arms", default=",".join(ROWS), help=f"comma-separated rows of {', '.join(ARMS)}")
    p.add_argument("--quick", action="store_true", help="smoke run: n=150, rates 0 and 0.5, one seed, 3 epochs")
    p.add_argument("--out", default=None, help="write per-seed results as JSON here")
    common_arguments(p)
    args = p.parse_args(argv)
    if args.quick:
        args.data, args.rates, args.seeds, args.epochs = "synth-clinic:n=150,imbalance=2,unmentioned=0,missing=0", "0,0.5", "0", 3
    rates = [float(r) for r in args.rates.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    arms, data = prepare_run(p, args)
    base = engine_config(args)
    acc: dict[str, dict[float, list[float]]] = {a: {r: [] for r in rates} for a in arms}
    for seed in seeds:
        tr, te = stratified_holdout(data.labels, args.test_fraction, seed)
        for rate in rates:
            train, test = apply_protocol(data.take(tr), data.take(te), args.protocol, rate, seed)
            for a in arms:
                r = train_and_score(ARMS[a], base, train, test, seed)
                acc[a][rate].append(r["accuracy"])
                print(f"seed {seed} rate {rate:.0%} {a}: acc {100 * r['accuracy']:.1f} ({r['seconds']:.0f}s)", flush=True)

    counts = np.bincount(data.labels, minlength=data.num_classes).tolist()
    print(f"\n{args.protocol}, {args.data} (class counts {counts}), hold-out {args.test_fraction:.0%} test, seeds {seeds}; "
          f"text {args.text_encoder}, image {args.image_encoder} (random init); epochs {args.epochs}, lr {args.lr}, "
          f"batch {args.batch_size}, imbalance {args.imbalance}. Accuracy (%), mean ± std over seeds.\n")
    print("| model | " + " | ".join(f"{r:.0%}" for r in rates) + " |")
    print("|---|" + "---|" * len(rates))
    for a in arms:
        print(f"| {a} | " + " | ".join(pm(acc[a][r]) for r in rates) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "accuracy": {a: {str(r): v for r, v in acc[a].items()} for a in arms}}, f, indent=1)


if __name__ == "__main__":
    main()
