"""The report's figures: when each can be drawn, and how (a static matplotlib figure, an interactive plotly one).

:data:`PLOTS` lists them in the order :mod:`search.report.reports` writes them; each :class:`Plot`
draws from a :class:`Context` (the search's results, the Optuna study rebuilt from them by
:mod:`search.report.optuna_study`, the metric, the fANOVA seed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from search.select.results import StudyResults


@dataclass(frozen=True)
class Plot:
    """One report plot: when it can be drawn, and how (static matplotlib Axes, interactive plotly Figure)."""

    name: str
    requires: Callable[[Context], str | None]
    """Returns why the plot cannot be drawn, or None."""
    static: Callable[[Context], Any]
    interactive: Callable[[Context], Any]


@dataclass
class Context:
    """What a plot draws from: the search's results, the Optuna study rebuilt from them, the metric, fANOVA's seed."""

    study: StudyResults
    ot: optuna.Study
    metric: str
    seed: int

    @property
    def target_name(self) -> str:
        return f"{self.metric} (mean over folds)"

    def completed(self) -> list[optuna.trial.FrozenTrial]:
        return self.ot.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def params(self) -> list[str]:
        """Parameters present in every completed trial (what fANOVA and the parallel plot can use)."""
        trials = self.completed()
        if not trials:
            return []
        common = set(trials[0].params)
        for t in trials[1:]:
            common &= set(t.params)
        return sorted(common)

    def any_params(self) -> list[str]:
        return sorted({p for t in self.completed() for p in t.params})

    def evaluator(self) -> optuna.importance.FanovaImportanceEvaluator:
        return optuna.importance.FanovaImportanceEvaluator(seed=self.seed)


def _need(trials: int = 1, params: int = 0, any_params: int = 0) -> Callable[[Context], str | None]:
    def check(ctx: Context) -> str | None:
        n = len(ctx.completed())
        if n < trials:
            return f"needs at least {trials} finished trial{'s' if trials > 1 else ''}, the study has {n}"
        if params and len(ctx.params()) < params:
            return (f"needs at least {params} parameters shared by the finished trials, "
                    f"found {len(ctx.params())} ({', '.join(ctx.params()) or 'none'})")
        if any_params and len(ctx.any_params()) < any_params:
            return "the finished trials have no searched parameter"
        return None

    return check


def _learning_curves_static(ctx: Context) -> Any:
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=(7, 4.5))
    styles = {TrialState.COMPLETE: "-", TrialState.PRUNED: "--", TrialState.FAIL: ":"}
    trials = ctx.ot.get_trials(deepcopy=False)
    for t in trials:
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        ax.plot(steps, [t.intermediate_values[s] for s in steps], styles.get(t.state, "-"), marker="o", markersize=3,
                label=f"#{t.number} {t.user_attrs['ray_trial_id']} ({t.state.name.lower()})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{ctx.metric} (validation, mean over folds)")
    ax.set_title(f"Learning curves: {ctx.study.name}")
    if len(trials) <= 12:
        ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return ax


def _learning_curves_interactive(ctx: Context) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for t in ctx.ot.get_trials(deepcopy=False):
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        fig.add_trace(go.Scatter(x=steps, y=[t.intermediate_values[s] for s in steps], mode="lines+markers",
                                 name=f"#{t.number} {t.user_attrs['ray_trial_id']} ({t.state.name.lower()})",
                                 line={"dash": {"COMPLETE": "solid", "PRUNED": "dash"}.get(t.state.name, "dot")}))
    fig.update_layout(title=f"Learning curves: {ctx.study.name}", xaxis_title="epoch",
                      yaxis_title=f"{ctx.metric} (validation, mean over folds)")
    return fig


def _has_curve(ctx: Context) -> str | None:
    if not any(t.intermediate_values for t in ctx.ot.get_trials(deepcopy=False)):
        return "no trial reported a value of the metric yet"
    return None


def _optuna_plot(name: str, **kwargs_of: Callable[[Context], Any]) -> tuple[Callable, Callable]:
    def kwargs(ctx: Context) -> dict[str, Any]:
        return {k: f(ctx) for k, f in kwargs_of.items()}

    def static(ctx: Context) -> Any:
        return getattr(optuna.visualization.matplotlib, name)(ctx.ot, **kwargs(ctx))

    def interactive(ctx: Context) -> Any:
        return getattr(optuna.visualization, name)(ctx.ot, **kwargs(ctx))

    return static, interactive


_target = {"target_name": lambda c: c.target_name}
PLOTS: dict[str, Plot] = {
    "optimization_history": Plot("optimization_history", _need(trials=1),
                                 *_optuna_plot("plot_optimization_history", **_target)),
    "param_importances": Plot("param_importances", _need(trials=2, params=2),
                              *_optuna_plot("plot_param_importances", evaluator=lambda c: c.evaluator(),
                                            params=lambda c: c.params(), **_target)),
    "parallel_coordinate": Plot("parallel_coordinate", _need(trials=2, params=2),
                                *_optuna_plot("plot_parallel_coordinate", params=lambda c: c.params(), **_target)),
    "slice": Plot("slice", _need(trials=1, any_params=1),
                  *_optuna_plot("plot_slice", params=lambda c: c.any_params(), **_target)),
    "learning_curves": Plot("learning_curves", _has_curve, _learning_curves_static, _learning_curves_interactive),
}
"""The report's plots, in the order they are written; add one by registering a :class:`Plot`."""
