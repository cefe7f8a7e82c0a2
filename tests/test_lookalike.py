"""Look-alike search and colour from pixels: the foreground descriptor on made images, the look-alike ranking,
the query left out of its own results, filters, and the colour-aware index of a real (tiny) run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import run_tailor
from tailor.models.colour import (GREY_BINS, HISTOGRAM_WIDTH, HUE_BINS, LIGHTNESS_BINS, CHROMA_BINS,
                                  ColourDescriptor, colour_histogram, dominant_colour, foreground_mask, rgb_to_lab)
from tailor.search.index import EmbeddingIndex, SearchIndexError
from tailor.search.lookalike import LookalikeSettings, category_votes


def _photo(colour: tuple[float, float, float], size: int = 64, box: tuple[int, int] = (16, 48)) -> torch.Tensor:
    """A catalog-like photo: a square of ``colour`` on a white background, ``(1, 3, H, W)`` in [0, 1]."""
    image = torch.ones(1, 3, size, size)
    image[:, :, box[0]:box[1], box[0]:box[1]] = torch.tensor(colour)[:, None, None]
    return image


def test_lab_conversion_matches_known_values():
    lab = rgb_to_lab(torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).T[None, :, :, None])[0, :, :, 0].T
    assert torch.allclose(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=0.05)
    assert torch.allclose(lab[1], torch.tensor([53.24, 80.09, 67.20]), atol=0.1)  # sRGB red
    assert torch.allclose(lab[2], torch.zeros(3), atol=0.05)


def test_a_red_square_on_white_is_red_and_the_background_is_left_out():
    photo = _photo((0.85, 0.05, 0.05))
    mask = foreground_mask(photo)[0]
    assert mask[20, 20] and not mask[2, 2] and mask.float().mean() == pytest.approx(0.25, abs=0.01)
    assert torch.allclose(dominant_colour(photo)[0], torch.tensor([0.85, 0.05, 0.05]), atol=0.02)
    histogram = colour_histogram(rgb_to_lab(photo), foreground_mask(photo))[0] ** 2  # shares of the foreground
    assert histogram.sum() == pytest.approx(1.0, abs=1e-5)
    assert histogram[-GREY_BINS:].sum() < 0.01  # no white from the background, no grey
    hue_share = histogram[:-GREY_BINS].view(HUE_BINS, LIGHTNESS_BINS, CHROMA_BINS).sum((1, 2))
    lab = rgb_to_lab(torch.tensor([0.85, 0.05, 0.05])[None, :, None, None])[0, :, 0, 0]
    red_bin = int((torch.atan2(lab[2], lab[1]) + torch.pi) / (2 * torch.pi) * HUE_BINS)
    assert hue_share.argmax() == red_bin and hue_share[red_bin] > 0.99


def test_white_inside_the_product_outline_stays_foreground():
    """A white shirt with a dark outline keeps its white; only white reachable from the border is background."""
    photo = _photo((0.1, 0.1, 0.1))
    photo[:, :, 20:44, 20:44] = 1.0  # white inside the dark frame
    mask = foreground_mask(photo)[0]
    assert mask[30, 30] and not mask[1, 1]
    whole_white = torch.ones(1, 3, 32, 32)  # nothing but white: every pixel is kept rather than none
    assert foreground_mask(whole_white).all()


def test_the_descriptor_tells_navy_from_blue_from_black_and_is_standardised():
    descriptor = ColourDescriptor((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    photos = torch.cat([_photo(c) for c in ((0.05, 0.1, 0.35), (0.2, 0.4, 0.9), (0.05, 0.05, 0.05))])
    raw = descriptor.raw(photos)
    histograms = raw[:, :HISTOGRAM_WIDTH]
    assert torch.allclose(histograms.norm(dim=1), torch.ones(3), atol=1e-5)  # Hellinger rows: unit length
    cosine = histograms @ histograms.T
    assert cosine[0, 1] < 0.5 and cosine[0, 2] < 0.5 and cosine[1, 2] < 0.1
    descriptor.fit(raw)
    standardised = descriptor(photos)
    assert torch.allclose(standardised.mean(0), torch.zeros_like(standardised[0]), atol=1e-5)


def _index(colours: bool = True) -> EmbeddingIndex:
    """Six products: three T-shirts (red, blue, blue), two dresses (red, blue) and a watch; the embeddings put
    the category first, the colour vectors say the colour."""
    tee, dress, watch = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]]), dim=1)
    embeddings = torch.stack([tee, tee * 0.98 + dress * 0.02, tee * 0.995 + dress * 0.005, dress, dress, watch])
    red, blue = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    return EmbeddingIndex(F.normalize(embeddings, dim=1), ["t1", "t2", "t3", "d1", "d2", "w1"],
                          ["Tshirts", "Tshirts", "Tshirts", "Dresses", "Dresses", "Watches"],
                          [f"{i}.jpg" for i in range(6)], "/catalog",
                          torch.stack([red, blue, blue, red, blue, blue]) if colours else None,
                          {"gender": ["Men", "Women", "Men", "Women", "Women", "Men"],
                           "baseColour": ["Red", "Blue", "Blue", "Red", "Blue", "Blue"]})


def test_colour_reorders_within_the_category_and_the_query_is_left_out():
    index = _index()
    query, query_colour = index.embeddings[2:3], torch.tensor([[0.0, 1.0]])  # the blue T-shirt t3, as a query
    plain = index.search(query, 3, settings=LookalikeSettings(colour_weight=0.0, category_weight=0.0))[0]
    assert [n.id for n in plain] == ["t3", "t1", "t2"]  # today: the product itself first, colour ignored
    found = index.search(query, 3, query_colour, exclude=[{2}],
                         settings=LookalikeSettings(colour_weight=0.5, category_weight=1.0))[0]
    assert "t3" not in [n.id for n in found]
    assert [n.id for n in found[:2]] == ["t2", "t1"]  # the blue T-shirt first, the category vote keeps T-shirts …
    blue_first = index.search(query, 2, query_colour, exclude=[{2}],
                              settings=LookalikeSettings(colour_weight=2.0, category_weight=0.0))[0]
    assert [n.id for n in blue_first] == ["t2", "d2"]  # … where colour alone pulls in the blue dress
    scores = [n.score for n in found]
    assert scores == sorted(scores, reverse=True)


def test_filters_narrow_the_search_and_an_unknown_column_is_refused():
    index = _index()
    found = index.search(index.embeddings[:1], 6, allowed=index.allowed({"gender": "Women"}))[0]
    assert {n.id for n in found} == {"t2", "d1", "d2"}  # only the allowed ones, fewer than k
    assert [n.id for n in index.search(index.embeddings[:1], 6, allowed=index.allowed({"label": "Watches"}))[0]] == ["w1"]
    with pytest.raises(SearchIndexError, match="cannot filter by 'colour'.*baseColour.*gender"):
        index.allowed({"colour": "Red"})


def test_category_votes_are_a_softmax_over_the_nearest_labels():
    similarity = torch.tensor([[0.9, 0.8, 0.1]])
    votes = category_votes(similarity, torch.tensor([0, 1, 1]), 2, votes=2, temperature=0.1)
    expected = torch.softmax(torch.tensor([9.0, 8.0]), 0)
    assert torch.allclose(votes[0], expected) and votes.sum() == pytest.approx(1.0)


def test_an_index_round_trips_its_colours_and_attributes(tmp_path):
    index = _index()
    index.save(tmp_path / "index.pt")
    loaded = EmbeddingIndex.load(tmp_path / "index.pt")
    assert torch.allclose(loaded.colours.float(), index.colours) and loaded.attributes == index.attributes
    assert loaded.position("d2") == 4 and loaded.positions_of_file("/catalog/4.jpg") == {4}
    both = EmbeddingIndex.concat([index, _index(colours=False)])
    assert both.colours is None and len(both) == 12 and both.attributes["gender"][6:] == index.attributes["gender"]


def test_similar_on_a_run_leaves_the_query_out_and_honours_same_class_and_filters(search_run, tiny_dataset):
    index = EmbeddingIndex.load(search_run / "index.pt")
    assert index.colours is not None and index.colours.shape[0] == len(index)  # the run fitted a colour probe
    assert torch.allclose(index.colours.float().norm(dim=1), torch.ones(len(index)), atol=1e-2)
    query = sorted((tiny_dataset / "images").glob("*.jpg"))[3]
    own = index.labels[min(index.positions_of_file(query))]
    gender = index.attributes["gender"][min(index.positions_of_file(query))]
    result = run_tailor("similar", str(search_run), str(query), "--k", "30", "--same-class",
                        "--filter", f"gender={gender}", "--out", str(search_run / "sheet.png"))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert rows and query.stem not in [r[1] for r in rows]
    for r in rows:
        where = index.position(r[1])
        assert index.labels[where] == own and index.attributes["gender"][where] == gender
    wrong = run_tailor("similar", str(search_run), str(query), "--filter", "fabric=Cotton")
    assert wrong.returncode == 2 and "cannot filter by 'fabric'" in wrong.stderr
    typo = run_tailor("similar", str(search_run), str(query), "--filter", "gender")
    assert typo.returncode == 2 and "COLUMN=VALUE" in typo.stderr
