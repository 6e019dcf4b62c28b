"""``python -m mlfleet`` is the same as the ``mlfleet`` command."""

from mlfleet.main import main

raise SystemExit(main())
