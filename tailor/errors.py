"""The errors every layer may raise about its inputs, and turning exceptions into the one line a user reads."""

from __future__ import annotations

import re


class ConfigError(ValueError):
    """A configuration that cannot be used: missing file, unknown name, bad value. Here, with no gin, so that
    the code below the front-ends can say so without importing the configuration layer."""


#: Errors whose message already says what is wrong and where: shown as they are.
_SELF_EXPLAINING = (
    "CatalogError", "ConfigError", "UnsafePathError", "ImageError", "BackboneError", "ModelFileError",
    "RunConflict", "FileNotFoundError", "EpisodeError", "NotImplementedError", "EnrollError",
)


def describe(err: BaseException) -> str:
    """One line: the message for errors that explain themselves, else the type, message and a hint."""
    # gin appends "In call to configurable 'x' (<function …>)" to errors raised inside configurables.
    text = re.split(r"\s+In call to configurable ", str(err), maxsplit=1)[0]
    message = " ".join(text.split()) or type(err).__name__
    if type(err).__name__ in _SELF_EXPLAINING:
        return message
    return f"{type(err).__name__}: {message} (run with -v for the full traceback)"
