"""Look-alike ranking: what a merchandiser means by "what looks like this?" — the same kind of product, in the
same colour.

A catalog product's score for a query adds three similarities:

- the category embedding's cosine (the metric-learning model: what kind of product it is);
- ``colour_weight`` × the cosine of the two colour vectors (:class:`~tailor.models.colour.ColourProbe`: the
  square roots of the colour-class probabilities, so surely-same colours score 1, surely-different 0);
- ``category_weight`` × the probability that the product's own category is the query's, from a softmax vote
  of the query's ``votes`` nearest embeddings (``temperature``): colour then ranks products *within* the
  query's likely category instead of pulling in red products of any kind.

Measured on the bundled sample (``bench/lookalike.py``: odd-year queries among even-year products), adding
colour alone trades category for colour almost one for one; the category vote is what keeps both. The
weights were chosen on the years-swapped direction (a run trained on the odd years, the even-year products
searched among them: the highest same-colour rate within a point of the embedding alone's same-category rate)
and reported once on the test years.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: embedding cosine above which two photos count as the same picture (an index stores half precision): never a
#: query's own answer, wherever the catalog is held
SAME_IMAGE_COSINE = 0.9995
#: the nearest products looked at for the same picture and the category vote
NEAREST = 32


@dataclass(frozen=True)
class LookalikeSettings:
    #: weight of the colour vectors' cosine; 0 ranks by the category embedding alone
    colour_weight: float = 4.0
    #: weight of the query's category vote for the product's category; 0 turns the vote off
    category_weight: float = 2.0
    #: nearest embeddings that vote on the query's category
    votes: int = 10
    #: softmax temperature of the vote (over cosines)
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if self.colour_weight < 0 or self.category_weight < 0:
            raise ValueError("lookalike weights must be 0 or more")
        if self.votes < 1 or self.temperature <= 0:
            raise ValueError("lookalike.votes must be at least 1 and lookalike.temperature above 0")


def settings(colour_weight: float = LookalikeSettings.colour_weight,
             category_weight: float = LookalikeSettings.category_weight, votes: int = LookalikeSettings.votes,
             temperature: float = LookalikeSettings.temperature) -> LookalikeSettings:
    """The look-alike weights (the front-ends bind it as ``lookalike.settings``: :mod:`tailor.run_inputs`)."""
    return LookalikeSettings(colour_weight, category_weight, votes, temperature)


def category_votes(similarity: torch.Tensor, labels: torch.Tensor, num_labels: int, votes: int,
                   temperature: float) -> torch.Tensor:
    """``(Q, num_labels)``: each query's softmax vote over the categories of its ``votes`` most similar
    products (``similarity``: ``(Q, N)`` embedding cosines; ``labels``: ``(N,)`` category numbers, or ``(Q, N)``
    when each query has its own candidates)."""
    top = similarity.topk(min(votes, similarity.shape[1]), dim=1)
    weights = torch.softmax(top.values / temperature, dim=1)
    codes = labels[top.indices] if labels.dim() == 1 else labels.gather(1, top.indices)
    return torch.zeros(len(similarity), num_labels, device=similarity.device).scatter_add_(1, codes, weights)


def lookalike_scores(query_embeddings: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor,
                     num_labels: int, query_colours: torch.Tensor | None = None,
                     colours: torch.Tensor | None = None, settings: LookalikeSettings | None = None,
                     vote: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, embedding similarity)``, both ``(Q, N)``: every catalog product's look-alike score for
    each query, and the plain embedding cosine (for distances). Colour counts only when both sides have it.
    ``vote``: the queries' category votes when they were taken elsewhere (an approximate search scores a
    shortlist, but the vote comes from the query's nearest products, filtered or not)."""
    settings = settings or LookalikeSettings()
    similarity = query_embeddings.float() @ embeddings.float().T
    scores = similarity.clone()
    if settings.colour_weight and query_colours is not None and colours is not None:
        scores += settings.colour_weight * (query_colours.float() @ colours.float().T)
    if settings.category_weight:
        if vote is None:
            vote = category_votes(similarity, labels, num_labels, settings.votes, settings.temperature)
        scores += settings.category_weight * vote[:, labels]
    return scores, similarity


def voted_categories(vote: torch.Tensor, mass: float = 0.9, most: int = 3) -> torch.Tensor:
    """The categories holding ``mass`` of a query's vote (:func:`category_votes`' row), strongest first, at most
    ``most``: where an approximate search looks for candidates besides the whole catalog."""
    weights, order = vote.sort(descending=True)
    enough = int((weights.cumsum(0) < mass).sum()) + 1
    return order[:min(enough, most)]
