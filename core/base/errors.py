"""Typed errors that carry the facts; the CLI and TUI turn them into one sentence.

Every error a user can cause derives from :class:`MlfleetError`, whose
``str()`` is the sentence shown to the user and whose ``exit_code`` is the
batch-mode exit status (see docs/cli.md for the table).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the thing ran and failed (a job failed, was cancelled)
EXIT_USAGE = 2  # bad input: a spec, a flag, a filter
EXIT_DRIFT = 3  # reserved for drift checks (--fail-on-drift)
EXIT_NOT_FOUND = 4  # a job, run or host that does not exist
EXIT_UNAVAILABLE = 5  # controller or agent could not be reached or started
EXIT_DENIED = 6  # the policy (policy.yaml: a role, a quota at submit, residency) does not allow it


class MlfleetError(Exception):
    """Base of every error meant for a user's eyes."""

    exit_code = EXIT_FAILED


class SpecError(MlfleetError):
    """A YAML file (job spec, config) is wrong at a known place."""

    exit_code = EXIT_USAGE

    def __init__(self, path: str, line: int | None, field: str | None, problem: str, hint: str = "") -> None:
        self.path = path
        self.line = line
        self.field = field
        self.problem = problem
        self.hint = hint
        where = path if line is None else f"{path}:{line}"
        what = f"{field}: {problem}" if field else problem
        text = f"{where}: {what}"
        if hint:
            text += f"; {hint}"
        super().__init__(text)


class SpecErrors(SpecError):
    """Several mistakes in one file: each its own sentence at its line, one per line of the message.

    It is the first one (path, line, field) for code that looks at only one.
    """

    def __init__(self, errors: list[SpecError]) -> None:
        first = errors[0]
        super().__init__(first.path, first.line, first.field, first.problem, first.hint)
        self.errors = list(errors)
        self.args = ("\n".join(str(e) for e in errors),)

    def __str__(self) -> str:
        return str(self.args[0])


class UsageError(MlfleetError):
    """A command-line argument or request parameter is wrong."""

    exit_code = EXIT_USAGE


class PermissionDeniedError(MlfleetError):
    """The controller's policy does not allow this caller this action; the sentence names the permission and rule."""

    exit_code = EXIT_DENIED


class NotFoundError(MlfleetError):
    """A named job, run or host does not exist."""

    exit_code = EXIT_NOT_FOUND


class UnavailableError(MlfleetError):
    """The controller or an agent cannot be reached or started."""

    exit_code = EXIT_UNAVAILABLE


class NoAnswerError(UnavailableError):
    """A request went out on a live connection and no answer came back within its time.

    Frames are never lost on a working stream, so the link under it is not
    to be trusted any more: its owner tears it down and connects again.
    """


class HostUnreachableError(UnavailableError):
    """A host's agent cannot be reached right now (the host is marked ``unreachable``)."""

    def __init__(self, host: str, why: str = "") -> None:
        self.host = host
        super().__init__(f"host {host} is unreachable{': ' + why if why else ''}")


class GpuClaimedError(UnavailableError):
    """A launch asked for GPUs another live run on the node holds (agents/claims.py).

    Not a failure of the job: its controller gives the run back to the queue
    (core/jobs/launch.py), and the job is placed again, elsewhere or later.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)


class UnsafePathError(UnavailableError):
    """A folder, file or socket mlfleet would use belongs to someone else, or someone else could swap it."""

    def __init__(self, path: str, problem: str, hint: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path} {problem}: {hint}")


class SubmitUncertainError(UnavailableError):
    """A submit may have reached the controller, but no answer came back while the client kept asking.

    The job may or may not exist; the key finds out, and submitting again with
    the same key is safe (it gives the job back if there is one).
    """

    def __init__(self, name: str, key: str, resubmit: str, waited: float, why: str) -> None:
        self.name = name
        self.key = key
        self.resubmit = resubmit
        self.why = why
        super().__init__(f"the controller was lost while submitting {name} and did not answer again within "
                         f"{waited:.0f} s ({why.rstrip('.')}); the job may exist: check with "
                         f"'mlfleet jobs list --key {key}', or run '{resubmit}' again, which is safe")


class StoreVersionError(MlfleetError):
    """The DuckDB file was written by a newer mlfleet than this one."""

    exit_code = EXIT_UNAVAILABLE


class ProtocolError(MlfleetError):
    """The peer spoke something that is not our protocol (or not our version)."""

    exit_code = EXIT_UNAVAILABLE


class RemoteError(MlfleetError):
    """An error raised on the other side of an RPC, carried back by kind.

    ``kind`` is the class name of the original error so that the receiving
    side can keep the original exit code.
    """

    def __init__(self, kind: str, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.kind = kind
        self.exit_code = exit_code
