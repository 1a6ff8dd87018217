"""The one exception type that means "the user asked for something that cannot work"."""


class PrunekitError(Exception):
    """A user-facing error: one line naming the problem and the fix. The CLI prints it and exits with code 2."""
