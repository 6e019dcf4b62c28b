"""The scheduler's parts; :mod:`mlfleet.core.scheduler` is the entry point and says how they fit."""
