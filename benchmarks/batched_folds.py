"""Per-epoch cost of a 5-fold trial: folds one after the other vs all folds batched vs a bare loop.

In one process, on breast-tcga, at the space's default configuration (``baseline`` and
``omnifuse``; 5 folds, one thread): (a) a bare PyTorch loop written here — the same early-fusion
network (modality MLP encoders, concatenation with the mask, MLP classifier), data, folds and
batch size, ``torch.optim.AdamW`` with its defaults, no bookkeeping — the floor; (b) the
engine's :class:`trainables.trainable.Trial` with ``batch_folds=False`` (per-fold training);
(c) the same Trial with its folds batched (:mod:`trainables.batched`). Training alone
(``train``) and a whole trial step with the per-fold evaluation (``step``). The three are timed
interleaved, ``--repeats`` times, and the fastest repeat of each is reported (a shared machine's
load only ever adds time), with ratios against (a).

    FUSETUNE_DATA_DIR=../shared/data python benchmarks/batched_folds.py            # 4 min CPU (15 min wall, loaded 2 cores)
    FUSETUNE_DATA_DIR=../shared/data python benchmarks/batched_folds.py --quick    # about a third of that
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


def bare_folds(data, config: dict, folds: int, seed: int) -> list:
    """The fold models, data and optimizers of the bare loop (early fusion, plain CE)."""
    from trainables.data.preprocess import Standardizer
    from trainables.trial_data import fold_splits

    out = []
    h, p = int(config["hidden"]), float(config["dropout"])
    for k, (tr, _) in enumerate(fold_splits(data.labels, folds, seed)):
        train = data.take(tr)
        train = Standardizer.fit(train).transform(train)
        mods = list(train.modalities.values())
        xs = [torch.as_tensor(m.values, dtype=torch.float32) for m in mods]
        mask = torch.as_tensor(np.stack([m.mask for m in mods], 1)).float()
        y = torch.as_tensor(train.labels, dtype=torch.long)
        torch.manual_seed(seed + k)
        encoders = nn.ModuleList(nn.Sequential(nn.Linear(x.shape[1], h), nn.ReLU(), nn.Dropout(p), nn.Linear(h, h)) for x in xs)
        classifier = nn.Sequential(nn.Linear(len(xs) * h + len(xs), h), nn.ReLU(), nn.Dropout(p), nn.Linear(h, train.num_classes))
        params = [*encoders.parameters(), *classifier.parameters()]
        opt = torch.optim.AdamW(params, lr=float(config["lr"]), weight_decay=float(config["weight_decay"]))
        out.append((xs, mask, y, encoders, classifier, opt, np.random.default_rng(seed + k)))
    return out


def bare_epoch(folds: list, batch_size: int) -> None:
    for xs, mask, y, encoders, classifier, opt, rng in folds:
        order = torch.as_tensor(rng.permutation(len(y)))
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            m = mask[idx]
            emb = [enc(x[idx] * m[:, j:j + 1]) * m[:, j:j + 1] for j, (enc, x) in enumerate(zip(encoders, xs))]
            loss = nn.functional.cross_entropy(classifier(torch.cat([*emb, m], 1)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def per_epoch_ms(fn, epochs: int) -> float:
    t0 = time.perf_counter()
    for _ in range(epochs):
        fn()
    return (time.perf_counter() - t0) / epochs * 1000


def measure(space_name: str, epochs: int, repeats: int, folds: int) -> dict[str, float]:
    from spaces import get_space
    from trainables.engine import parse_config
    from trainables.trainable import Trial
    from trainables.trial_data import prepare

    space = get_space(space_name)
    data = prepare("breast-tcga", space.representations)
    config = {**space.default_config(), "method": space.method, "data": "breast-tcga", "seed": 0, "folds": folds,
              "epochs": 10_000}
    full = parse_config(space.method, config).flat
    bare = bare_folds(data.data, full, folds, 0)
    per_fold = Trial(space.method, config, data, batch_folds=False)
    batched = Trial(space.method, config, data)
    cases = {
        "bare loop": lambda: bare_epoch(bare, int(full["batch_size"])),
        "per-fold train": lambda: [t.train_epoch() for t in per_fold.trainers],
        "batched train": lambda: batched.batched.train_epoch(),
        "per-fold step": per_fold.step,
        "batched step": batched.step,
    }
    for fn in cases.values():  # warm-up
        fn()
    best = {name: float("inf") for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            best[name] = min(best[name], per_epoch_ms(fn, epochs))
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs and repeats")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args(argv)
    epochs, repeats = (5, 3) if args.quick else (10, 5)
    torch.set_num_threads(1)
    print(f"breast-tcga, {args.folds} folds, 1 thread, fastest of {repeats} repeats x {epochs} epochs: ms per trial epoch "
          f"(ratio to the bare loop)\n")
    names = ("bare loop", "per-fold train", "batched train", "per-fold step", "batched step")
    print("| space | " + " | ".join(names) + " | batched speed-up, train / step |")
    print("|---" * (len(names) + 2) + "|")
    for space in ("baseline", "omnifuse"):
        best = measure(space, epochs, repeats, args.folds)
        floor = best["bare loop"]
        cells = " | ".join(f"{best[n]:.1f} ({best[n] / floor:.2f}x)" for n in names)
        print(f"| {space} | {cells} | {best['per-fold train'] / best['batched train']:.2f}x / "
              f"{best['per-fold step'] / best['batched step']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
