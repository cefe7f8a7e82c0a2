"""gin configuration: parsing ``-c`` files and ``-p`` bindings exactly as the seed's ``experiment.py`` did, with
errors turned into one readable line, and the operative config saved with every run."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Sequence

import gin

from tailor.errors import ConfigError  # noqa: F401  (raised here; tailor.config.ConfigError as before)
from tailor.paths import PACKAGE_ROOT, REPO_ROOT


@gin.configurable(module="onnx")
def session_threads(threads: int = 0) -> int:
    """The ``onnx.session_threads.threads`` binding: ONNX Runtime's intra-op threads (0: one per core), which
    the commands that run an exported model pass to its session. Registered here, in the one gin module
    without torch, so that ``tailor predict MODEL.onnx`` knows it."""
    return threads


def parse(config_files: Sequence[str | Path], bindings: Sequence[str]) -> None:
    """Clear gin, then apply ``config_files`` in order and ``bindings`` after them (bindings win).

    The names they bind must be registered already: front-ends call :func:`tailor.configurables.parse`,
    which imports every configurable module first.
    """
    gin.clear_config()
    # `include 'configs/transfer.gin'` resolves from the working directory, the including file's folder
    # and the tailor checkout, so the shipped configs work from anywhere.
    for folder in {str(Path(p).resolve().parent.parent) for p in config_files} | {str(REPO_ROOT), str(PACKAGE_ROOT)}:
        gin.add_config_file_search_path(folder)
    for path in config_files:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
    try:
        with _only_trusted_imports():
            gin.parse_config_files_and_bindings([str(p) for p in config_files], list(bindings),
                                                finalize_config=False)
    except (ValueError, KeyError, SyntaxError, ImportError, TypeError) as err:
        raise ConfigError(_one_line(err, list(bindings))) from None


#: the packages a config file may import; everything it configures must be registered by them
TRUSTED_PACKAGES = ("tailor", "torch", "gin")


@contextlib.contextmanager
def _only_trusted_imports():
    """Refuse ``import`` statements of other modules (and gin's dynamic registration, which makes any function
    configurable) before they run: a config file shared with a run must not be able to execute code.

    gin has no hook for this, so its import handler is wrapped for the duration of one parse.
    """
    original = gin.config.ParseContext.process_import

    def guarded(context, statement):
        module = statement.module
        if module.startswith("__gin__") or module.split(".")[0] not in TRUSTED_PACKAGES:
            raise ConfigError(f"'{statement.format().strip()}' refused: a config can only configure registered "
                              f"{' and '.join(TRUSTED_PACKAGES[:2])} names")
        return original(context, statement)

    gin.config.ParseContext.process_import = guarded
    try:
        yield
    finally:
        gin.config.ParseContext.process_import = original


def _one_line(err: Exception, bindings: list[str]) -> str:
    if isinstance(err, SyntaxError):
        if err.filename:
            return f"{err.msg.rstrip('.')} in {err.filename}, line {err.lineno}"
        if err.lineno and 0 < err.lineno <= len(bindings):  # gin numbers the -p bindings as lines
            return f"{err.msg.rstrip('.')} in -p {bindings[err.lineno - 1]!r}"
    text = str(err).strip().splitlines()
    first = text[0] if text else type(err).__name__
    where = next((line.strip() for line in text[1:] if re.search(r"line \d+|In (file|bindings)", line)), "")
    return f"{first} ({where})" if where else first


def config_name(config_files: Sequence[str | Path]) -> str:
    """A run's default name: the stem of its last config file (``configs/transfer.gin`` → ``transfer``)."""
    return Path(config_files[-1]).stem if config_files else "run"


def bound_value(name: str):
    """The value bound to ``name`` (``"TransferNet.saved_model_path"``), or ``None`` when nothing is bound."""
    try:
        return gin.query_parameter(name)
    except ValueError:
        return None


def full_config() -> str:
    """Every binding in force (what the user asked for), for the run folder before training starts."""
    return gin.config_str()


def operative_config() -> str:
    """The bindings that were actually used, written at the end of a run."""
    return gin.operative_config_str()
