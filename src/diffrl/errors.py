"""The project's one error type: anything a user can fix (bad config, missing file, bad reward)."""


class DiffrlError(Exception):
    """A problem with the user's input or environment. The CLI prints it on one line and exits 2."""
