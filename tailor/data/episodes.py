"""N-way K-shot Q-query episodes over any table of labels — the relation-net notebook's "dataframe in a
particular format", made general.

An episode draws ``n_way`` classes, then ``k_shot`` support and ``q_query`` query rows of each, without
overlap. Classes with fewer than ``k_shot + q_query`` rows cannot take part; they are excluded and listed.
Episodes are reproducible: episode ``i`` of a sampler depends only on its seed and ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np


class EpisodeError(ValueError):
    """Episodes that cannot be drawn (too few classes, or too few examples per class)."""


@dataclass(frozen=True)
class Episode:
    classes: tuple[str, ...]    # the episode's classes; position i is episode label i
    support: np.ndarray         # (n_way, k_shot) row indices into the table
    query: np.ndarray           # (n_way, q_query) row indices

    def support_labels(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.classes)), self.support.shape[1])

    def query_labels(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.classes)), self.query.shape[1])


class EpisodeSampler:
    """Episodes from ``labels`` (one label per row of a table).

    ``classes``: restrict episodes to these classes (e.g. the novel classes of a disjoint split); rows of
    other classes are never drawn.
    """

    def __init__(self, labels: Sequence[str], n_way: int = 5, k_shot: int = 1, q_query: int = 15,
                 classes: Sequence[str] | None = None, seed: int = 0):
        if min(n_way, k_shot, q_query) < 1:
            raise EpisodeError(f"n_way, k_shot and q_query must be at least 1 (got {n_way}, {k_shot}, {q_query})")
        labels = np.asarray(list(labels), dtype=object)
        wanted = set(labels) if classes is None else set(classes)
        rows_by_class = {c: np.flatnonzero(labels == c) for c in sorted(wanted)}
        need = k_shot + q_query
        self.excluded = {c: len(rows) for c, rows in rows_by_class.items() if len(rows) < need}
        self.rows_by_class = {c: rows for c, rows in rows_by_class.items() if len(rows) >= need}
        self.classes = sorted(self.rows_by_class)
        if len(self.classes) < n_way:
            raise EpisodeError(
                f"{n_way}-way {k_shot}-shot episodes with {q_query} queries need {n_way} classes with at least "
                f"{need} examples each; only {len(self.classes)} have that many"
                + (f" ({len(self.excluded)} excluded for having fewer: "
                   + ", ".join(f"{c} ({n})" for c, n in sorted(self.excluded.items())[:8])
                   + ("…" if len(self.excluded) > 8 else "") + ")" if self.excluded else ""))
        self.n_way, self.k_shot, self.q_query, self.seed = n_way, k_shot, q_query, seed

    def episode(self, index: int) -> Episode:
        rng = np.random.default_rng((self.seed, index))
        chosen = rng.choice(len(self.classes), size=self.n_way, replace=False)
        classes = tuple(self.classes[i] for i in chosen)
        support, query = [], []
        for c in classes:
            rows = rng.choice(self.rows_by_class[c], size=self.k_shot + self.q_query, replace=False)
            support.append(rows[: self.k_shot])
            query.append(rows[self.k_shot:])
        return Episode(classes, np.stack(support), np.stack(query))

    def episodes(self, count: int) -> Iterator[Episode]:
        return (self.episode(i) for i in range(count))


def split_classes(labels: Sequence[str], fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0
                  ) -> tuple[list[str], list[str], list[str]]:
    """Disjoint train / validation / test class sets (the standard few-shot protocol), reproducibly."""
    classes = sorted(set(labels))
    order = np.random.default_rng(seed).permutation(len(classes))
    n_train = int(round(fractions[0] * len(classes)))
    n_val = int(round(fractions[1] * len(classes)))
    pick = lambda idx: sorted(classes[i] for i in idx)  # noqa: E731
    return pick(order[:n_train]), pick(order[n_train:n_train + n_val]), pick(order[n_train + n_val:])
