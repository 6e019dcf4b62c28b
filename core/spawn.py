"""How mlfleet starts Python processes of its own (controller, agents, runners).

Every such process runs this interpreter with ``-P`` and starts in a folder
of mlfleet's, never in the user's current one. Why: ``python -m mlfleet``
puts the current folder first on ``sys.path``, so started from a folder that
holds a directory named ``mlfleet`` (the home folder of someone who cloned
mlfleet into ``~/mlfleet``) the child imported that directory as an empty
namespace package instead of the installed mlfleet, and died with
``cannot import name '__version__'``. ``-P`` (Python 3.11+) leaves the
current folder off the path; the neutral ``cwd`` also keeps a detached
daemon from holding the user's folder open (an unmount, a deleted folder).

Only mlfleet's own processes are started this way: a job runs its command
in its own workdir with the interpreter it names (see agents/supervisor.py).
"""

from __future__ import annotations

import sys


def own_python(*args: str, module: str = "mlfleet") -> list[str]:
    """The argv that runs ``python -m MODULE ARGS`` with this interpreter, blind to the current folder."""
    return [sys.executable, "-P", "-m", module, *args]
