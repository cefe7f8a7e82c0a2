"""A linear map from image features to the space of category names, learned on the categories that have
images, so a category known only by its name can still be scored.

This is ESZSL (Romera-Paredes & Torr, 2015, "An embarrassingly simple approach to zero-shot learning"): with
standardised features ``X`` (D × N), targets ``Y`` (N × Z, +1 / -1) and the seen categories' name vectors ``S``
(Z × A), ``V = (X Xᵀ + γI)⁻¹ X Y S (SᵀS + λI)⁻¹`` in closed form — deterministic, a second on a CPU — and
category ``c`` scores ``x V s_c``. Because that score is linear in ``x``, a name-only category becomes one more row
of a classifier's linear head (:meth:`SemanticMap.head_rows`), so every path that runs the head (evaluate,
predict, serve, an exported ONNX file) carries it with nothing else to load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SemanticMap:
    """``projection`` (D × A) and ``offset`` (A) take raw features to name space (the standardisation folded
    in); ``spread``: the standard deviation of the training scores, which :meth:`head_rows` divides by so one
    scale suits every backbone."""

    projection: torch.Tensor
    offset: torch.Tensor
    spread: float

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Features (…, D) → name space (…, A)."""
        return features.float() @ self.projection + self.offset

    def scores(self, features: torch.Tensor, name_vectors: torch.Tensor) -> torch.Tensor:
        """Compatibility of each row of ``features`` with each category name (…, C), in units of ``spread``."""
        return self.embed(features) @ name_vectors.float().T / self.spread

    def head_rows(self, name_vectors: torch.Tensor, scale: float, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight (C, D), bias (C,))`` of linear-head rows whose logits are ``scale · scores + shift``."""
        vectors = name_vectors.float() * (scale / self.spread)
        return vectors @ self.projection.T, vectors @ self.offset + shift

    def state(self) -> dict:
        return {"projection": self.projection.float().cpu(), "offset": self.offset.float().cpu(), "spread": self.spread}

    @classmethod
    def from_state(cls, state: dict) -> "SemanticMap":
        return cls(state["projection"].float(), state["offset"].float(), float(state["spread"]))


def fit_semantic_map(features: torch.Tensor, targets: torch.Tensor, name_vectors: torch.Tensor,
                     gamma: float = 100.0, lam: float = 1.0) -> SemanticMap:
    """ESZSL on ``features`` ((views, N, D) or (N, D); views are averaged) of images of the categories whose
    name vectors are the rows of ``name_vectors`` (``targets`` index them). ``gamma`` regularises the feature
    side, ``lam`` the name side."""
    x = features.float().mean(0) if features.dim() == 3 else features.float()
    if len(x) != len(targets):
        raise ValueError(f"{len(x)} feature rows for {len(targets)} targets")
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = ((x - mean) / std).double()
    s = name_vectors.double()
    y = -torch.ones(len(z), len(s), dtype=torch.float64)
    y[torch.arange(len(z)), targets.long()] = 1.0
    eye_d = torch.eye(z.shape[1], dtype=torch.float64)
    eye_a = torch.eye(s.shape[1], dtype=torch.float64)
    left = torch.linalg.solve(z.T @ z + gamma * eye_d, z.T @ y @ s)            # (D, A)
    v = torch.linalg.solve(s.T @ s + lam * eye_a, left.T).T                      # (D, A)
    projection = (v / std.double()[:, None]).float()
    offset = -(mean.double() / std.double()) @ v
    scores = (z @ v) @ s.T
    return SemanticMap(projection, offset.float(), float(scores.std().clamp_min(1e-12)))
