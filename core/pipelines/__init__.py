"""Pipelines: a DAG of steps (jobs, drift checks, gates, registers, promotes) that retrains and promotes models (issue 17).

This folder holds the pure foundation (docs/pipelines.md, "Design (work in
progress)"): the spec and its checks, the DAG, step keys and why a key
changed, and gate decisions; and the layer the service will use: the
store's records and step cache (records), the planner (plan, pure), output
hashing and checks (outputs) and their shared records (state). The CLI
(commands, with pages for the words and drawing for the DAG) speaks to the
pipelines service.

``PUBLIC`` names the modules other capabilities and the TUI may import; the
rest is this capability's own (tests/test_import_directions.py keeps that).
"""

# models: a pipeline as plain data (Pipeline, Step, Input), what the TUI will show.
# spec: pipeline.yaml read and validated (load_pipeline_spec), the CLI and TUI check one before sending it.
# graph: topological order and "which steps depend on X".
# keys: step keys and their named parts; explain: why a step's key changed, in sentences.
# gates: a challenger against the champion, into a decision record.
# drawing: the DAG as text; pages: the words of the service's answers (the CLI's and the TUI's Pipelines view).
PUBLIC = ("models", "spec", "graph", "keys", "explain", "gates", "drawing", "pages")
