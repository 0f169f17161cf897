"""Encoder time of a search of N trials on synth-clinic: feature cache vs. encoding in every trial.

Both paths encode the same dataset with the same encoders (default: the packaged MiniLM for the
reports, the random tiny ResNet for the images) into every representation the registered methods
read from them (text cls/tokens/attributes, image pooled/map), in the same run:

* **no cache**: every trial loads the encoders and encodes the dataset (N encodes);
* **cache**: the first call encodes and writes the cache, then every trial computes the key and
  memory-maps the entry (1 encode + N loads).

Each trial also reads every feature once (as a trial does when it builds its tensors), so the
lazily mapped pages are paid for, and the in-process memo of checkpoint hashes is cleared before
each trial, as a fresh trial process would have to hash the weights again. Library imports and a
warm-up encode of 8 samples are done before timing. Prints a Markdown table.

    python benchmarks/encoder_cache.py                # N = 8 trials, n = 600 patients
    python benchmarks/encoder_cache.py --quick        # N = 3, n = 150
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time

import numpy as np
import torch

from trainables.data import load_dataset
from trainables.encoders import encode_dataset, sources

REPRESENTATIONS = {"text": ("cls", "tokens", "attributes"), "image": ("pooled", "map")}


def read_all(data) -> float:
    """Touch every feature, as a trial does when it builds its tensors."""
    return float(sum(np.asarray(m.values, dtype=np.float32).sum() for m in data.modalities.values()))


def one_trial(data, cache_dir: str | None, args) -> float:
    sources._DIGESTS.clear()  # a fresh trial process has no memo of the checkpoint hash
    t0 = time.perf_counter()
    out = encode_dataset(data, REPRESENTATIONS, text_encoder=args.text_encoder, image_encoder=args.image_encoder,
                         cache_dir=cache_dir, use_cache=cache_dir is not None, max_length=args.max_length,
                         batch_size=args.batch_size, device=args.device)
    read_all(out)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8, help="N, trials of the search")
    p.add_argument("--n", type=int, default=600, help="synth-clinic patients")
    p.add_argument("--text-encoder", default="minilm")
    p.add_argument("--image-encoder", default="resnet-tiny")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--quick", action="store_true", help="N = 3 trials on 150 patients")
    args = p.parse_args()
    if args.quick:
        args.trials, args.n = 3, 150
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    data = load_dataset(f"synth-clinic:n={args.n},seed=0")
    warm = data.take(np.arange(8))
    one_trial(warm, None, args)  # imports and first-call overheads, outside both timings
    logging.getLogger("trainables.encoders").setLevel(logging.ERROR)  # the random-encoder warning was shown once

    no_cache = [one_trial(data, None, args) for _ in range(args.trials)]
    with tempfile.TemporaryDirectory(prefix="fusetune-bench-") as cache_dir:
        first = one_trial(data, cache_dir, args)
        loads = [one_trial(data, cache_dir, args) for _ in range(args.trials)]
        size = sum(st.st_size for st in _walk(cache_dir))
    cached_total = first + sum(loads)
    total_no_cache = sum(no_cache)

    print(f"synth-clinic n={args.n}, N={args.trials} trials, text {args.text_encoder} (max_length {args.max_length}), "
          f"image {args.image_encoder}, representations {REPRESENTATIONS}")
    print(f"device {args.device}, torch {torch.__version__}, {os.cpu_count()} CPUs, {platform.machine()}, "
          f"cache entries {size / 2**20:.1f} MiB\n")
    print("| path | encoder runs | total encoder time (s) | per trial (s) |")
    print("|---|---:|---:|---:|")
    print(f"| encode inside every trial | {args.trials} | {total_no_cache:.2f} | {np.mean(no_cache):.3f} |")
    print(f"| cache: 1 encode + {args.trials} loads | 1 | {cached_total:.2f} | {cached_total / args.trials:.3f} |")
    print(f"| - first encode + cache write | | {first:.2f} | |")
    print(f"| - cache load (mean of {args.trials}) | | {np.mean(loads):.3f} | |")
    print(f"\n**ratio no-cache / cache: {total_no_cache / cached_total:.1f}x** "
          f"(per-trial load vs. per-trial encode: {np.mean(no_cache) / np.mean(loads):.0f}x)")


def _walk(root: str):
    for dirpath, _, files in os.walk(root):
        for f in files:
            yield os.stat(os.path.join(dirpath, f))


if __name__ == "__main__":
    main()
