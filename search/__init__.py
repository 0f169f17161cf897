"""fusetune search: command-line entry points, orchestration, tracking and export."""
