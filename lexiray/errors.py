"""User-facing errors: the CLI prints their message as one line and exits 2."""


class LexirayError(Exception):
    """A problem the user can fix; the message names the file or field and the fix."""


class ConfigError(LexirayError):
    """A setting is unknown or out of range."""


class DataError(LexirayError):
    """The dataset cannot be loaded or has too many unusable rows."""


class ResourceError(LexirayError):
    """The requested hardware (GPU, precision) is not available here."""
