"""Optuna define-by-run search spaces, one per method, in a registry."""
