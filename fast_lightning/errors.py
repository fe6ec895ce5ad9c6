"""The project's user-facing errors, in one import-light module every layer may use.

Why: the CLI prints a ``UserError`` as one line without a traceback and prints a traceback for anything
else, so a mistake the user can fix (a config key, a data file, an option) must raise one of these, and a
bug (a plain ``ValueError`` from a shape check, say) must not be disguised as one. ``ConfigError`` and
``DataError`` also subclass ``ValueError`` so callers that catch ``ValueError`` keep working.
"""


class UserError(Exception):
    """An error with a message the user can act on; printed without a traceback."""


class ConfigError(UserError, ValueError):
    """A configuration problem the user can fix; the message names the key or file."""


class DataError(UserError, ValueError):
    """Bad or missing data; the message names the file or folder and what to do."""
