"""The one error every store raises when it cannot answer; callers fail closed."""


class StoreError(Exception):
    """The store cannot be reached or cannot be used right now."""
