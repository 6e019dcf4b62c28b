"""``python -m mlfleet`` is the same as the ``mlfleet`` command."""

from mlfleet.core.cli.main import main

raise SystemExit(main())
