"""Saving and loading model files safely.

A tailor model file (``model.pt``) is a plain dict of tensors, strings, numbers and lists: everything
``torch.load(weights_only=True)`` accepts, so loading a file from elsewhere can never run code. Writes are
atomic (temporary file, fsync, rename): a run killed mid-write never leaves a truncated file behind.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from tailor import run_folder
from tailor.files import atomic_write

#: The format of a multi-attribute model file (``tailor.models.multitask``).
MULTITASK_FORMAT = "tailor.multitask/1"

#: The final backbone's training features, kept in a run folder so `tailor enroll` can refit the head.
PROBE_FEATURES = run_folder.PROBE_FEATURES


class ModelFileError(RuntimeError):
    """A model file that is missing, damaged, or not safe to load."""


def save_model_file(path: str | Path, payload: dict) -> None:
    atomic_write(path, lambda f: torch.save(payload, f))


def load_model_file(path: str | Path) -> dict:
    """Load a model file or Lightning checkpoint with ``weights_only=True``; refuse anything else."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelFileError(
            f"{path}: refused — it holds Python objects beyond tensors and plain data, which could run code "
            f"when loaded ({str(err).splitlines()[0][:160]})") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ModelFileError(f"{path}: not a readable model file ({str(err).splitlines()[0][:160]})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a dict of weights, found {type(data).__name__}")
    return data


#: The format of an ensemble's model file (``tailor.models.ensemble``).
ENSEMBLE_FORMAT = "tailor.ensemble/1"


def is_ensemble_file(saved: dict) -> bool:
    """Whether a loaded model file holds an ensemble (one file per member inside)."""
    return str(saved.get("format", "")).startswith("tailor.ensemble")


def is_multitask_file(saved: dict) -> bool:
    """Whether a loaded model file holds a multi-attribute model (one head per attribute)."""
    return str(saved.get("format", "")).startswith("tailor.multitask")
