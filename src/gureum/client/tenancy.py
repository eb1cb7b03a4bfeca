"""PLACEHOLDER: replaced by the tenancy work."""

from gureum.client.base import Transport


class _API:
    def __init__(self, t: Transport) -> None:
        self._t = t


class WorkspacesAPI(_API):
    pass


class UsersAPI(_API):
    pass


class KeysAPI(_API):
    pass


class AuditAPI(_API):
    pass
