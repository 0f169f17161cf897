"""Peak memory of one trial, per method: what each concurrent trial adds to a worker.

For every method, in a fresh process: load the data the way a trial gets it (``prepare``: the
training part, text and images encoded through the feature cache, which an earlier process has
filled), read the resident set size (RSS), warm torch up (one step of a tiny layer), then build the
trial's 5 fold models exactly as the trainable does (``trainables.trainable.Trial``, the space's
paper-default configuration) and train them for a few epochs while a thread samples the RSS every
2 ms. Reported: the RSS before the trial, the peak during it, and the difference (the trial's own
memory: models, optimizer states, activations, fold copies of the data). Separately, the RSS of an
idle Ray worker that has imported the trainables: what every concurrent trial costs before it
starts. CPU only (no GPU on the benchmark machine): peak GPU memory would be
``torch.cuda.max_memory_allocated`` on a GPU worker.

    FUSETUNE_DATA_DIR=../shared/data python benchmarks/trial_memory.py            # ~2 min on 2 cores
    FUSETUNE_DATA_DIR=../shared/data python benchmarks/trial_memory.py --quick    # ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from searches import machine  # noqa: E402

CASES = (  # (space, data); the space gives the method and its paper-default configuration
    ("baseline", "breast-tcga"),
    ("climd", "breast-tcga"),
    ("omnifuse", "breast-tcga"),
    ("omnifuse", "rosmap"),
    ("alignedfusion", "synth-clinic:n=600"),
    ("emrfusion", "synth-clinic:n=600"),
)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(space_name: str, data_spec: str, epochs: int, folds: int) -> dict[str, float]:
    """In this process: the RSS before and at peak during one trial (see the module docs)."""
    import torch

    from spaces import get_space
    from trainables.trainable import Trial
    from trainables.trial_data import prepare

    torch.set_num_threads(1)
    space = get_space(space_name)
    data = prepare(data_spec, space.representations, text_encoder=space.text_encoder, image_encoder=space.image_encoder)
    config = {**space.default_config(), "method": space.method, "data": data_spec, "seed": 0, "folds": folds,
              "epochs": epochs}
    warm = torch.nn.Linear(8, 8)  # torch's one-off runtime set-up (allocator, autograd, AdamW) is not the trial's
    torch.optim.AdamW(warm.parameters()).step(warm(torch.randn(4, 8)).sum().backward())
    before = rss_mb()
    peak, stop = [before], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    trial = Trial(space.method, config, data)
    for _ in range(epochs):
        trial.step()
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    params = sum(p.numel() for p in trial.trainers[0].model.parameters())
    return {"before_mb": before, "peak_mb": max(peak[0], rss_mb()), "params": params, "seconds": seconds,
            "samples": len(data.data)}


def idle_ray_worker_mb() -> float:
    """RSS of a Ray worker that has imported what a trial imports, before any trial runs."""
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        @ray.remote
        def worker_rss() -> float:
            import trainables.engine  # noqa: F401
            import trainables.trainable  # noqa: F401

            return rss_mb()

        return float(ray.get(worker_rss.remote()))
    finally:
        ray.shutdown()


def child(argv: list[str]) -> None:
    if argv[0] == "ray":
        print(json.dumps({"idle_mb": idle_ray_worker_mb()}))
    else:
        space, data, epochs, folds = argv[0], argv[1], int(argv[2]), int(argv[3])
        print(json.dumps(measure(space, data, epochs, folds)))


def in_child(*args: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, __file__, "--child", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 epoch, 2 folds, breast-tcga methods only")
    args = ap.parse_args()
    epochs, folds = (1, 2) if args.quick else (3, 5)
    cases = CASES[:3] if args.quick else CASES
    print(f"machine: {machine()}\n")
    from trainables.data import DatasetSpec

    for _, data in cases:  # fill the feature cache first, so no encoder runs in a measured process
        if DatasetSpec.parse(data).name == "synth-clinic":
            in_child("alignedfusion", data, "1", "2")
    rows = [(space, data, in_child(space, data, str(epochs), str(folds))) for space, data in cases]
    idle = in_child("ray")["idle_mb"]
    print(f"one trial = {folds} fold models trained in lockstep for {epochs} epochs (paper-default configuration); "
          f"RSS in MiB\n")
    print("| space | data | training samples | parameters per fold model | RSS before the trial | peak RSS during it "
          "| the trial's own peak (difference) | s per epoch |\n|---|---|---|---|---|---|---|---|")
    for space, data, m in rows:
        print(f"| {space} | {data} | {m['samples']} | {m['params']:,} | {m['before_mb']:.0f} | {m['peak_mb']:.0f} "
              f"| {m['peak_mb'] - m['before_mb']:.0f} | {m['seconds'] / epochs:.2f} |")
    print(f"\nidle Ray worker with the trainables imported: {idle:.0f} MiB RSS (each concurrent trial's worker pays it once;"
          f" Ray reuses the worker for the next trial)")


if __name__ == "__main__":
    main()
