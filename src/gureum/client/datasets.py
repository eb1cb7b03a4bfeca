"""PLACEHOLDER: replaced by the datasets work."""

from gureum.client.base import Transport


class DatasetsAPI:
    def __init__(self, t: Transport) -> None:
        self._t = t
