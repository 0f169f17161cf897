"""What a finished search prints: its summary (counts, the top trials, the confirmation, the
registered versions, where to look next, the steps' times)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from search.prepare.config import SearchConfig, storage_path
from search.prepare.objective import Objective
from search.report.timing import since_start
from search.select import results_csv
from search.stages import Collected, Prepared
from search.trust.credentials import redact
from search.tune.progress import format_duration

TABLE_ROWS = 5
"""Configurations in the final table (at least; ``--top-k`` more if larger)."""

STEP_ORDER = ("startup_s", "checks_s", "data_s", "ray_init_s", "search_s", "results_s", "prune_s", "models_s",
              "reports_s", "total_s")
"""The fixed steps of a search in the final ``steps:`` line (seconds; ``startup`` = interpreter
start and imports, ``models`` = the confirmation stage, the references, the refit, test evaluation,
registration and promotion of the top-k)."""


def ui_command(uri: str, storage: str) -> str:
    """How to look at the search in MLflow: the server's page, or ``fusetune ui`` (on 127.0.0.1,
    the store's URI passed in its environment, never on a command line)."""
    from search.tracking.store import default_tracking_uri

    uri = redact(uri)
    if uri.startswith(("http://", "https://", "databricks")):
        return f"open {uri} (the MLflow server's UI)"
    if uri == default_tracking_uri(storage_path(storage)):
        return f"fusetune ui --storage {storage}"
    return f"fusetune ui --tracking-uri {uri}"


# --------------------------------------------------------------------------------- stage 5: what the user reads
def render(cfg: SearchConfig, prepared: Prepared, collected: Collected, chosen: Any, reports: Any) -> str:
    """The search's summary: counts, the top trials, the confirmation, the registered versions,
    where the results, reports and MLflow are, the steps' times (what the command line prints at the
    end; :func:`search.run_search` only when asked)."""
    lines: list[str] = []
    say = lines.append
    rows, ranked, timings = collected.rows, collected.ranked, prepared.timings
    failed = sum(r.status == "ERROR" for r in rows)
    say("")
    say(f"{len(rows)} trials ({len(ranked)} finished all {cfg.epochs} epochs, "
          f"{len(rows) - len(ranked) - failed} stopped early, {failed} failed) in {format_duration(timings['search_s'])}"
          f" (Ray start {timings['ray_init_s']:.1f}s, data {timings['data_s']:.1f}s)")
    pruned = collected.pruned
    if pruned.folders:
        say(f"{pruned.folders} checkpoint(s) of trials outside the top {max(cfg.top_k, 1)} deleted "
              f"({pruned.bytes / 2**20:.1f} MiB)")
    shown = ranked[: max(cfg.top_k, TABLE_ROWS)]
    say(f"top {len(shown)} by {cfg.primary_metric} " + ("(mean ± std over folds):" if cfg.folds else "(hold-out split):"))
    say(results_csv.table(shown, cfg.primary_metric, prepared.space.names, cfg.metric[1:], spread=cfg.folds != 0))
    if collected.pareto is not None:
        say(f"pareto-optimal trials on {', '.join(cfg.metric)}: {', '.join(sorted(collected.pareto)) or '-'}")
    if chosen.confirmation is not None:
        _render_confirmation(cfg, chosen, say)
    elif chosen.reference_rows and ranked:
        _render_references(cfg, ranked, chosen, say)
    versions = chosen.versions
    if versions:
        say(f"registered model {chosen.registered}: versions {', '.join(map(str, versions))}; "
              f"v{versions[0]} -> alias {chosen.decision.alias} ({chosen.decision.reason})")
    say(f"results: {collected.csv_path}")
    say(f"reports: {reports.location}" + (f" (skipped: {', '.join(reports.skipped)})" if reports.skipped else ""))
    say(f"MLflow: {ui_command(prepared.uri, cfg.storage)}")
    timings["total_s"] = since_start()
    say(f"steps: {timings.line(STEP_ORDER)}")
    return "\n".join(lines)


def _render_confirmation(cfg: SearchConfig, chosen: Any, say: Callable[[str], None]) -> None:
    from search.select.verdict import summary
    from search.select.verdict import table as confirmation_table

    say(f"\nconfirmation on fresh folds ({cfg.primary_metric}, mean ± std over the "
          f"{cfg.confirm_repeats} x {max(cfg.folds, 1)} fresh fold scores):")
    say(confirmation_table(chosen.confirmation))
    say(summary(chosen.confirmation))
    if cfg.multi_objective and cfg.ensemble != "off":
        say(f"(a multi-objective search: the ensemble is selected and confirmed on the first objective, "
              f"{cfg.primary_metric}, alone)")


def _render_references(cfg: SearchConfig, ranked: list[Any], chosen: Any, say: Callable[[str], None]) -> None:
    """No confirmation: the best trial against the references on the search's own folds."""
    m, best = cfg.primary_metric, ranked[0].value(cfg.primary_metric)
    objective = Objective(m, cfg.primary_mode)
    ref = max(chosen.reference_rows, key=lambda r: objective.key(r[m]))
    beaten = objective.better(best, ref[m])
    say("references on the search's folds: " + ", ".join(f"{r['trial_id']} {r[m]:.4f}" for r in chosen.reference_rows)
          + f"; the best trial ({best:.4f}) {'beats' if beaten else 'does not beat'} {ref['trial_id']} "
          "(not confirmed on fresh folds: --confirm-repeats 0)")


