"""``python -m search.compare``: a leaderboard of the best configuration of several studies.

    python -m search.compare STUDY_A STUDY_B ... [--storage DIR] [--reference STUDY]
                             [--metric macro_f1] [--out DIR]

Each argument is a study name (its folder under ``--storage``) or a space name, which stands for
the most recent study of that space in ``--storage``. For every study the best trial (best final
``--metric``, mean over folds, among the trials that finished) is listed with every metric's
mean ± std over folds, and compared with the reference study's best trial (default: the first
argument) by the Nadeau-Bengio corrected resampled t-test over the paired folds
(:mod:`search.select.stats`). A plain paired t-test over CV folds (``scipy.stats.ttest_rel``, as the
OmniFuse paper uses) overstates significance, because the folds share most of their training data;
the correction inflates the variance by n_test/n_train. The pairing is only meaningful on the same
samples and splits, so studies whose data fingerprint, ``folds``, ``seed`` or hold-out fraction
differ are refused.

The leaderboard is printed and written as Markdown and CSV (``--out``, default
``<storage>/comparisons``).
"""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.prepare.cli import OneLineParser, add_storage_option
from search.prepare.errors import UsageError
from search.prepare.objective import Objective
from search.select.results import StudyResults, TrialResult, load_study
from search.select.stats import TEST_NAME, corrected_resampled_ttest, test_train_ratio
from search.trust.credentials import private_outputs
from trainables.metrics import METRICS


@dataclass(frozen=True)
class Entry:
    study: StudyResults
    trial: TrialResult
    folds: np.ndarray
    """Per-fold values of the compared metric."""
    diff: float | None = None
    """Mean over folds of (this - reference)."""
    t: float | None = None
    p: float | None = None
    note: str = ""


def resolve(names: list[str], storage: str | Path) -> list[StudyResults]:
    """Studies by name; a name that is not a study folder but a space's name picks the most recent
    study of that space."""
    storage = Path(storage).expanduser()
    out = []
    for name in names:
        if (storage / name).is_dir():
            out.append(load_study(name, storage))
            continue
        from spaces import SPACES

        if name not in SPACES:
            raise UsageError(f"{name}: neither a study in {storage} nor a space name")
        candidates = []
        for folder in sorted(p for p in storage.iterdir() if p.is_dir()) if storage.is_dir() else []:
            try:
                study = load_study(folder.name, storage)
                if study.space == name:
                    candidates.append((max(p.stat().st_mtime for p in folder.iterdir()), study))
            except UsageError:
                continue
        if not candidates:
            raise UsageError(f"{name}: no study of space {name!r} in {storage}")
        out.append(max(candidates, key=lambda c: c[0])[1])
    return out


SAME: tuple[tuple[str, str], ...] = (
    ("data fingerprint", "data_fingerprint"),
    ("folds", "folds"),
    ("seed", "seed"),
)
"""What two studies must share for a paired comparison over folds (label, StudyResults attribute)."""


def check_comparable(studies: list[StudyResults]) -> None:
    """One-line :class:`UsageError` unless all studies ran on the same data, folds and seed."""
    ref = studies[0]
    for label, attr in SAME:
        for s in studies[1:]:
            a, b = getattr(ref, attr), getattr(s, attr)
            if a != b:
                short = (lambda v: str(v)[:12]) if attr == "data_fingerprint" else str
                raise UsageError(f"studies {ref.name} and {s.name} differ in {label} ({short(a)} vs {short(b)}): "
                                 "a paired comparison over folds needs the same data and folds")
    if ref.folds == 0:
        vf = {s.name: s.common("val_fraction") for s in studies}
        if len(set(vf.values())) > 1:
            raise UsageError(f"studies differ in the hold-out fraction ({vf}): not the same split")


def leaderboard(studies: list[StudyResults], metric: str, reference: str | None = None) -> list[Entry]:
    """Best trial per study, sorted best first, each with its paired t-test against the reference."""
    if metric not in METRICS:
        raise UsageError(f"--metric {metric}: expected one of {', '.join(METRICS)}")
    names = [s.name for s in studies]
    if len(set(names)) != len(names):
        raise UsageError(f"a study is named twice ({', '.join(names)})")
    reference = reference or names[0]
    if reference not in names:
        raise UsageError(f"--reference {reference}: not among the compared studies ({', '.join(names)})")
    check_comparable(studies)
    mode = METRICS[metric]
    best = {s.name: s.best(metric, mode) for s in studies}
    ref_folds = best[reference].fold_values(metric)
    ref_study = next(s for s in studies if s.name == reference)
    k = int(ref_study.folds) if ref_study.folds is not None else len(ref_folds)
    ratio = test_train_ratio(k, float(ref_study.common("val_fraction") or 0.2)) if k != 1 else 0.0
    entries = []
    for s in studies:
        trial = best[s.name]
        folds = trial.fold_values(metric)
        if s.name == reference:
            entries.append(Entry(s, trial, folds, note="reference"))
            continue
        diff = float(np.mean(folds - ref_folds))
        if len(folds) < 2:
            entries.append(Entry(s, trial, folds, diff, note="one hold-out split: no test"))
            continue
        res = corrected_resampled_ttest(folds, ref_folds, ratio)
        t, p = res.t, res.p
        if p is None or not math.isfinite(p):
            entries.append(Entry(s, trial, folds, diff, note="identical on every fold" if np.allclose(folds, ref_folds)
                                 else "constant difference over folds: t undefined"))
        else:
            entries.append(Entry(s, trial, folds, diff, t, p))
    entries.sort(key=lambda e: Objective(metric, mode).key(e.trial.value(metric)), reverse=True)
    return entries


def _pm(trial: TrialResult, metric: str) -> str:
    mean, std = trial.value(metric), trial.last.get(f"{metric}_std")
    return "-" if mean is None else f"{mean:.4f} ± {float(std or 0.0):.4f}"


def rows(entries: list[Entry], metric: str) -> list[dict[str, str]]:
    others = [m for m in METRICS if m != metric]
    out = []
    for rank, e in enumerate(entries, 1):
        row = {"rank": str(rank), "study": e.study.name, "space": str(e.study.space), "trial": e.trial.trial_id,
               "folds": str(len(e.folds)), metric: _pm(e.trial, metric)}
        row.update({m: _pm(e.trial, m) for m in others})
        row["diff_vs_reference"] = "" if e.diff is None else f"{e.diff:+.4f}"
        row["t"] = "" if e.t is None else f"{e.t:.3f}"
        row["p_corrected_t"] = e.note if e.p is None else f"{e.p:.4g}"
        out.append(row)
    return out


def to_markdown(table: list[dict[str, str]], metric: str, reference: str) -> str:
    cols = list(table[0])
    lines = [(f"Best configuration per study; {metric} and every metric as mean ± std over folds (validation); "
              f"{TEST_NAME} over the paired folds against `{reference}` (p_corrected_t)."), "",
             "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in table]
    return "\n".join(lines) + "\n"


def to_text(table: list[dict[str, str]]) -> str:
    cols = list(table[0])
    widths = {c: max(len(c), *(len(r[c]) for r in table)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in cols) for r in table]
    return "\n".join(line.rstrip() for line in lines)


def write(table: list[dict[str, str]], markdown: str, out: Path, stem: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path = out / f"{stem}.md", out / f"{stem}.csv"
    md.write_text(markdown)
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    return md, csv_path


@private_outputs()  # what it writes is readable by the user only (FUSETUNE_UMASK)
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m search.compare",
                           description="Leaderboard of the best configuration of several studies, "
                                       "with paired t-tests over folds.")
    parser.add_argument("studies", nargs="+", metavar="STUDY", help="study names (or space names: most recent study of it)")
    add_storage_option(parser)
    parser.add_argument("--reference", default=None, metavar="STUDY",
                        help="the study the others are tested against (default: the first)")
    parser.add_argument("--metric", default="macro_f1", help=f"one of {', '.join(METRICS)} (default: macro_f1)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where to write the Markdown and CSV (default: <storage>/comparisons)")
    args = parser.parse_args(argv)
    try:
        studies = resolve(args.studies, args.storage)
        reference = args.reference
        if reference is not None and reference not in [s.name for s in studies]:
            reference = resolve([reference], args.storage)[0].name  # a space name given as the reference
        entries = leaderboard(studies, args.metric, reference)
    except UsageError as exc:
        print(f"python -m search.compare: error: {exc}", file=sys.stderr)
        return 2
    reference = next(e.study.name for e in entries if e.note == "reference")
    table = rows(entries, args.metric)
    out = Path(args.out) if args.out else Path(args.storage).expanduser() / "comparisons"
    md, csv_path = write(table, to_markdown(table, args.metric, reference), out,
                         f"{args.metric}-" + "-vs-".join(s.name for s in studies))
    print(to_text(table))
    print(f"\np_corrected_t: {TEST_NAME} over the paired folds against {reference} "
          "(a plain paired t-test over CV folds overstates significance)")
    print(f"\nwritten: {md}\n         {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
