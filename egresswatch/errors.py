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
