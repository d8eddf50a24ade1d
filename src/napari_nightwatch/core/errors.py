"""The one exception type users see.

Every bad input is reported as a :class:`NightwatchError` whose message is one
clear sentence naming the file or parameter and what was expected. The CLI turns
it into exit code 2, the widgets into a napari notification.
"""

from __future__ import annotations


class NightwatchError(ValueError):
    """A problem with the user's input, explained in one sentence."""


class Cancelled(RuntimeError):
    """Raised from a progress callback to stop a long job; finished chunks are kept."""
