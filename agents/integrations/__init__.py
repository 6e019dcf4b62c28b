"""Adapters that feed a training framework's logging into ``mlfleet.track``.

Each adapter lives in its own module and imports its framework there, so
``import mlfleet`` never needs torch:

* ``mlfleet.agents.integrations.lightning.MlfleetLogger``: a PyTorch Lightning logger.
* ``mlfleet.agents.integrations.hf.MlfleetCallback``: a Hugging Face Transformers callback.
"""
