"""Tune: the Ray Tune search with its Optuna sampler and trial scheduler, its persistent Optuna study, the
resume of an interrupted search (replayed scheduler decisions, settled trials) and the watched driver."""
