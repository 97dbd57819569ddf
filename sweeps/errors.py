"""User-facing errors: each message is a single line naming the field, file or path."""


class LrbsError(Exception):
    """Bad input (spec field, CLI argument, file on disk). The CLI prints it and exits 2."""

    exit_code = 2


class SweepStopped(LrbsError):
    """The sweep could not go on (a full disk, a folder turned read-only, Ray failing under it);
    the rows written so far are intact and ``lrbs resume`` continues it. Exit 4."""

    exit_code = 4
