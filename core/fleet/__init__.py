"""The fleet: the hosts, their keys and routes, bootstrapping agents onto them, and the links and syncs to them (docs/fleet.md)."""
