"""Typed errors that the CLI turns into one-line messages and exit codes (borgmatic style)."""


class SleepError(Exception):
    """Base class for errors a person can act on; never a bug."""

    exit_code = 1


class UsageError(SleepError):
    """A bad argument, date, config key or missing folder: exit 2."""

    exit_code = 2


class ConfigError(UsageError):
    """The config failed validation; the message lists every problem at once."""


class LockHeld(SleepError):
    """Another night holds the root's lock: exit 3."""

    exit_code = 3
