"""A hostile team member's raw client (tests/test_team_attack.py): RPCs the CLI never sends, on the team socket.

Run as another OS user (``User.run``), it opens the team socket directly
(the user is in the team's group, so the 0660 socket lets them in) and calls
one method ``COUNT`` times on one connection, as fast as the controller
answers. Every ``{i}`` in the JSON parameters becomes the call's number, so
one line floods the controller with requests that each look new.

    python team_attack_client.py SOCKET METHOD PARAMS_JSON [COUNT]

Prints one JSON object: how many calls were answered, how many refused and
with which kinds, and the first answer and error seen.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
from typing import Any

from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.base.protocol import open_unix_peer


def _numbered(value: Any, i: int) -> Any:
    if isinstance(value, str):
        return value.replace("{i}", str(i))
    if isinstance(value, list):
        return [_numbered(v, i) for v in value]
    if isinstance(value, dict):
        return {k: _numbered(v, i) for k, v in value.items()}
    return value


async def main(socket: str, method: str, params: dict[str, Any], count: int) -> dict[str, Any]:
    peer = await open_unix_peer(socket, "the team's controller")
    await peer.hello("client")
    kinds: collections.Counter[str] = collections.Counter()
    first_answer: Any = None
    first_error: str | None = None
    answered = 0
    for i in range(count):
        try:
            answer = await peer.request(method, request_timeout=60, **_numbered(params, i))
        except MlfleetError as exc:
            kinds[getattr(exc, "kind", type(exc).__name__)] += 1
            first_error = first_error or str(exc)
            continue
        answered += 1
        first_answer = answer if first_answer is None else first_answer
    await peer.close()
    return {"answered": answered, "refused": dict(kinds), "first_answer": first_answer, "first_error": first_error}


if __name__ == "__main__":
    sock, meth, raw, *more = sys.argv[1:]
    print(json.dumps(asyncio.run(main(sock, meth, json.loads(raw), int(more[0]) if more else 1)), default=str))
