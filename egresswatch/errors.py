"""Exceptions. Each carries a one-line message fit for a user."""


class EgresswatchError(Exception):
    """Base class: the CLI prints ``str(exc)`` as one line and exits non-zero."""


class ConfigError(EgresswatchError):
    pass


class CaptureError(EgresswatchError):
    pass


class CaptureFileError(CaptureError):
    """A capture file is corrupt, truncated or of an unknown format."""


class StoreError(EgresswatchError):
    pass


class PermissionProblem(EgresswatchError):
    """A file egresswatch trusts can be written by users other than root."""


def permission_hint(path: object = None, database: bool = False) -> str:
    """What to do about EACCES, as a suffix for a one-line message."""
    import os

    if os.geteuid() == 0:
        return ""
    if database or (path is not None and str(path).endswith((".db", ".db-wal", ".db-shm"))):
        return (
            " (run it with sudo, or have root add you to the database's group,"
            " daemon.db_group in /etc/egresswatch/config.toml)"
        )
    return " (run it with sudo, or choose a path you can write)"
