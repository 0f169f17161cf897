"""Optuna define-by-run search spaces, one per method, in a registry.

``SPACES`` maps a name (``omnifuse``, ``climd+omnifuse``, ``omnifuse-ablation``, ...) to a
:class:`Space`; ``register_space`` adds one (e.g. from a user module). Each space knows its
method (``trainables.registry``), its default data and epochs, and its paper-default
configuration, which a search evaluates first.
"""

from spaces.dimensions import AnyOf, Categorical, Dimension, Float, Forbidden, Int, Switch, When
from spaces.registry import SPACES, get_space, register_space
from spaces.space import Space

# isort: off
from spaces import baseline, omnifuse, alignedfusion, emrfusion  # noqa: F401  (register the built-in spaces, listed in this order)
# isort: on

__all__ = ["SPACES", "AnyOf", "Categorical", "Dimension", "Float", "Forbidden", "Int", "Space", "Switch", "When",
           "get_space", "register_space"]
