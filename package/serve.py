"""``from mlfleet import serve``: capture a model server's inputs and outputs (``serve.capture``).

It lives in ``mlfleet.agents.serve`` (the node side owns the file format);
this module is the short import path users type.
"""

from mlfleet.agents.serve import *  # noqa: F401,F403
from mlfleet.agents.serve import __all__  # noqa: F401
