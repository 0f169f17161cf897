"""fusetune trainables: datasets, metrics, the four methods and their Ray Tune trainables."""
