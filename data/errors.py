"""The one exception type for bad data input: its message is a single line meant for the user."""


class DataError(Exception):
    """A data file or option is missing or malformed; the message names it and what was expected."""
