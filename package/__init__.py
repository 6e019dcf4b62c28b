"""mlfleet: a terminal control center for GPU fleets.

This file is the root of the ``mlfleet`` import name; the code lives in
``mlfleet.core``, ``mlfleet.agents`` and ``mlfleet.tui`` (mapped from the
repository's top-level folders by pyproject.toml).
"""

__version__ = "0.1.0"
