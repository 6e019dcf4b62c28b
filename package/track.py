"""``from mlfleet import track``: the metrics client that jobs import.

It lives in ``mlfleet.agents.track`` (the node side owns the file format);
this module is the short import path users type.
"""

from mlfleet.agents.track import *  # noqa: F401,F403
from mlfleet.agents.track import __all__  # noqa: F401
