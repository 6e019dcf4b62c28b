"""The fleet: the hosts, their keys and routes, bootstrapping agents onto them, and the links and syncs to them (docs/fleet.md).

``PUBLIC`` names the modules other capabilities and the TUI may import; the
rest is this capability's own (tests/test_import_directions.py keeps that).
"""

# hostseen: when a host's numbers are stale, one definition for `hosts list` and the TUI's table and card.
# hostlink: the live link to one host, which jobs launch and poll through.
# service: the fleet's Service and its HostWork hook, by which another capability's work rides each poll.
# hostssh: an SSH connection of a client's own to a host, as strict as the controller's (deploy open's forwards).
# slurm_cluster: a Slurm cluster's shape (sinfo) in words and table cells, for hosts list, jobs why and the TUI.
PUBLIC = ("hostseen", "hostlink", "service", "hostssh", "slurm_cluster")
