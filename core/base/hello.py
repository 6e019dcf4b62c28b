"""The protocol version and the check every connection's first request (hello) must pass."""

from __future__ import annotations

from typing import Any

PROTOCOL_VERSION = 2


def hello_problem(params: dict[str, Any]) -> str:
    """Why a hello cannot open the conversation ('' when it can): the protocol must be exactly ours."""
    protocol = params.get("protocol")
    if protocol == PROTOCOL_VERSION and type(protocol) is int:
        return ""
    if "protocol" not in params:
        return f"hello must carry protocol: {PROTOCOL_VERSION} (the number this side speaks)"
    if type(protocol) is not int:
        return (f"hello's protocol must be the number {PROTOCOL_VERSION}, not {type(protocol).__name__} "
                f"{protocol!r}")
    return (f"the other side speaks protocol {protocol}, this side speaks {PROTOCOL_VERSION}; "
            "install the same mlfleet version on both sides")
