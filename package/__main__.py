"""``python -m mlfleet`` is the same as the ``mlfleet`` command."""

from mlfleet.core.cli import main

raise SystemExit(main())
