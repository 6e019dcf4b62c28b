"""The fleet: the hosts, their keys and routes, bootstrapping agents onto them, and the links to them (docs/fleet.md).

``PUBLIC`` names the modules other capabilities and the TUI may import; the
rest is this capability's own (tests/test_import_directions.py keeps that).
"""

# hostseen: when a host's numbers are stale, one definition for `hosts list` and the TUI's table and card.
PUBLIC = ("hostseen",)
