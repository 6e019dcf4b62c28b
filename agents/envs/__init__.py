"""Per-job environments on the node (issue 15): what the node has, and building what a job asks for.

``probe``: the interpreters and the platform this node reports (the ``env_probe`` RPC), so the
workstation can resolve wheels for them. ``build``: ``ensure_env``, which builds an
:class:`~mlfleet.core.base.models.EnvPlan` once per ``env_hash`` from wheels already in the
node's wheelhouse, never from an index. The runner calls it before it starts the job.
"""
