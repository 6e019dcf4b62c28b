"""The audit chain: a hash-linked record of who did what, written by every capability (docs/audit.md).

``PUBLIC`` names the modules other capabilities and the TUI may import; the
rest is this capability's own (tests/test_import_directions.py keeps that).
"""

# records: the functions every capability writes its audit events with (audit, audit_many), and the listing.
# config_change: the audit of a hand edit of hosts.yaml or config.yaml, which the fleet notices.
PUBLIC = ("records", "config_change")
