"""Errors a user can cause and fix. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input: an unknown name, a value out of range, missing data. The message says what to do."""
