"""Shared basics every part of mlfleet may import: errors, paths, settings, units, YAML with lines, the wire protocol.

Nothing here imports anything else of mlfleet's; the agents import only the
wire protocol and plain models from here (docs/architecture.md).
"""
