"""Sweeps: a grid or random search over spec paths, one child job per point, at most max_parallel at once (docs/sweeps.md).

``PUBLIC`` names the modules other capabilities and the TUI may import; the
rest is this capability's own (tests/test_import_directions.py keeps that).
"""

# children: a sweep spec's child specs, each checked by the job schema (the submit command checks them before sending).
# plan: the pure expansion of a sweep: block into points.
# summary: the words of a sweep's progress and best run, for the CLI and the TUI's sweeps view.
# commands: what `mlfleet submit` prints (and waits for) when the spec is a sweep.
PUBLIC = ("children", "plan", "commands", "summary")
