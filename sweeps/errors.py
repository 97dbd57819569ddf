"""The one user-facing error type: its message is a single line naming the field or file."""


class LrbsError(Exception):
    """Bad input (spec field, CLI argument, file on disk). The CLI prints it and exits 2."""
