"""What a model expects of its input (size, normalisation), apart from any library: the torch transforms and the
ONNX Runtime path both prepare images by it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataConfig:
    """What a backbone expects of its input."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_timm(cls, config: dict, size: int | None = None) -> "DataConfig":
        return cls(size=size or int(config["input_size"][-1]), mean=tuple(config["mean"]),
                   std=tuple(config["std"]))
