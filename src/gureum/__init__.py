"""gureum: a self-hostable AI cloud.

The public surface is the SDK: ``gureum.Client`` and its errors.
"""

__version__ = "0.1.0"

from gureum.client import Client
from gureum.client.errors import GureumError
from gureum.client.serving import EndpointClient, PredictResult

__all__ = ["Client", "EndpointClient", "GureumError", "PredictResult", "__version__"]
