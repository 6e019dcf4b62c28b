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
from collections.abc import Mapping

from mlfleet.core.base.private import USER_UMASK_ENV

# A fresh login's PATH (Debian's login.defs, systemd's default): where a local job finds tools, after
# mlfleet's interpreter (agents/supervisor.py puts that first).
LOGIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What a login session says about the user, kept from the environment that started the local agent.
LOGIN_VARIABLES = ("HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR")


def own_python(*args: str, module: str = "mlfleet") -> list[str]:
    """The argv that runs ``python -m MODULE ARGS`` with this interpreter, blind to the current folder."""
    return [sys.executable, "-P", "-m", module, *args]


def local_agent_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment the local agent (and so every local job) starts with: a login's, not a shell's.

    Why: the local agent is started by whichever command first started the
    controller, and it passed that shell's whole environment on to every
    local job for as long as it ran: an activated conda env's PATH, a
    ``MLFLEET_HOME`` meant for that command, a token exported by hand. A
    remote agent's jobs get the node's SSH login environment; a local job now
    gets the same kind of thing, the same whichever shell came first. What a
    job needs beyond it goes in its spec's ``env:`` (docs/scheduler.md).
    """
    env = {k: v for k, v in environ.items() if k in LOGIN_VARIABLES or k.startswith("LC_")}
    env["PATH"] = LOGIN_PATH
    if USER_UMASK_ENV in environ:  # the user's umask, for the files a job makes (core/base/private.py)
        env[USER_UMASK_ENV] = environ[USER_UMASK_ENV]
    return env
