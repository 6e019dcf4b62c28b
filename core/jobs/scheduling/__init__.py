"""The scheduler's parts; :mod:`mlfleet.core.jobs.scheduler` is the entry point and says how they fit."""
