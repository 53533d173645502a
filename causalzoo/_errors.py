"""The one exception class for problems with the user's input."""

__all__ = ["CausalZooError"]


class CausalZooError(ValueError):
    """An error in what the user passed in: data, keys, labels, hyper-parameters or files.

    The message names the problem, the offending key or value, and what to do about it.
    It is a ``ValueError`` so that generic handlers keep working.
    """
