"""Errors a user can cause and fix. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input: an unknown name, a value out of range, missing data. The message says what to do."""


class BrokenFile(UserError):
    """A file that is missing, truncated or not what it should be; the message names it and the fix.
    `reason` is what is wrong, without the fix (for callers whose file is not a run's own)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class WriteFailed(UserError):
    """A file could not be written (full disk, no permission, not a folder); nothing finished is lost."""


class RunInUse(UserError):
    """Another process holds the run directory."""
