"""Prepare a search: its options (:class:`SearchConfig`, the registries' names, the objective), the checks
that can refuse it before any trial starts, and its data's hand-over to the trials."""
