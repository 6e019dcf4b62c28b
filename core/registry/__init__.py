"""The model registry: named models, numbered versions copied into a content-addressed store, aliases with an
append-only history (docs/models.md).

``PUBLIC`` names the modules other capabilities and the TUI may import; the
rest is this capability's own (tests/test_import_directions.py keeps that).
"""

# records: resolve('iris@production' / 'iris:3' / 'iris') and alias_version: what deployments (core/deploy),
# pipelines later and the TUI need to turn a model reference into a version, its sha256 and file.
# api: RegistryApi.register and .move_alias, the RPCs' own code path for a caller inside the controller (a
# pipeline's register and promote steps), so the permission checks and the audit are the same.
# refs: what a model name, alias, reference and reason may be (a gate's champion, a promote's reason).
PUBLIC = ("records", "api", "refs")
