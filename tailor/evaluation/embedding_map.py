"""The map of an embedding: t-SNE of the test products, as a picture (``tsne.png``) and as an interactive
page (``tsne.html``) whose points show the product's image and class on hover.

The page is one self-contained file: plotly.js and every thumbnail (a small JPEG as a data URI) are inside
it, so it opens from disk with no server and no internet. Each class is a legend entry: click to hide it,
double-click to show it alone.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from tailor.evaluation.plots import plt

MARKERS = "os^Dv<>pP*XhH8d"


def tsne_2d(embeddings: np.ndarray | torch.Tensor, seed: int = 0, perplexity: float = 30.0,
            n_jobs: int = 2) -> np.ndarray:
    """2-D t-SNE (openTSNE, cosine metric: the embeddings are unit vectors), reproducible from ``seed``."""
    from openTSNE import TSNE

    x = np.asarray(embeddings, dtype=np.float32)
    perplexity = min(perplexity, max(2.0, (len(x) - 1) / 3))
    return np.asarray(TSNE(n_components=2, perplexity=perplexity, metric="cosine", random_state=seed,
                           n_jobs=n_jobs, verbose=False).fit(x))


def _class_order(labels: Sequence[str]) -> list[str]:
    values, counts = np.unique(np.asarray(labels, dtype=object), return_counts=True)
    return [str(values[i]) for i in np.argsort(-counts, kind="stable")]


def _style(i: int) -> tuple[str, str]:
    colour = plt.get_cmap("tab20")(i % 20)
    return "#%02x%02x%02x" % tuple(int(255 * c) for c in colour[:3]), MARKERS[(i // 20) % len(MARKERS)]


def plot_map_png(points: np.ndarray, labels: Sequence[str], path: str | Path, title: str = "t-SNE") -> Path:
    """A scatter coloured (and, past 20 classes, shaped) by class, largest classes first in the legend."""
    labels = np.asarray(labels, dtype=object)
    classes = _class_order(labels)
    columns = 1 if len(classes) <= 25 else 2 if len(classes) <= 60 else 3
    fig, ax = plt.subplots(figsize=(10 + 2.6 * columns, 9), constrained_layout=True)
    for i, c in enumerate(classes):
        colour, marker = _style(i)
        mask = labels == c
        ax.scatter(points[mask, 0], points[mask, 1], s=14, c=colour, marker=marker, alpha=0.8, linewidths=0,
                   label=f"{c} ({mask.sum()})")
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8 if columns == 1 else 7, ncol=columns,
              markerscale=1.6, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def thumbnail_uri(path: str | Path, size: int = 96) -> str:
    """A small JPEG of an image as a ``data:`` URI; empty when the file cannot be read (a missing image
    leaves a gap in a page, never a broken page)."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except (OSError, ValueError, Image.DecompressionBombError):
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_HOVER_SCRIPT = """
var plot = document.getElementById('{plot_id}');
var card = document.getElementById('tailor-card');
plot.on('plotly_hover', function (event) {
  var point = event.points[0];
  var data = point.customdata;
  card.innerHTML = (data[1] ? '<img src="' + data[1] + '" alt="">' : '') +
    '<div><b>' + data[0] + '</b><br>' + point.data.name + '</div>';
  card.style.display = 'block';
});
plot.on('plotly_unhover', function () { card.style.display = 'none'; });
"""

_CARD_STYLE = """<style>
#tailor-card {position: fixed; top: 12px; right: 12px; display: none; background: white; padding: 8px;
  border: 1px solid #bbb; border-radius: 6px; box-shadow: 0 2px 8px rgba(0,0,0,.15); font: 13px sans-serif;
  z-index: 10; text-align: center;}
#tailor-card img {width: 160px; height: 160px; object-fit: contain; display: block; margin-bottom: 4px;}
</style>"""


def write_map_html(points: np.ndarray, labels: Sequence[str], names: Sequence[str], images: Sequence[str | Path],
                   path: str | Path, title: str = "t-SNE", thumbnail_size: int = 96) -> Path:
    """The interactive map: one trace per class (legend filters), each point's image and name on hover."""
    import plotly.graph_objects as go

    labels = np.asarray(labels, dtype=object)
    thumbs = [thumbnail_uri(p, thumbnail_size) for p in images]
    fig = go.Figure()
    for i, c in enumerate(_class_order(labels)):
        rows = np.flatnonzero(labels == c)
        colour, _ = _style(i)
        fig.add_trace(go.Scattergl(
            x=points[rows, 0], y=points[rows, 1], mode="markers", name=html.escape(f"{c} ({len(rows)})"),
            marker={"size": 7, "color": colour, "opacity": 0.85},
            customdata=[[html.escape(str(names[j])), thumbs[j]] for j in rows],
            hovertemplate="%{customdata[0]}<extra>%{fullData.name}</extra>"))
    fig.update_layout(title=f"{html.escape(title)}<br><sup>hover a point to see the product; click a class in "
                            f"the legend to hide it, double-click to show it alone</sup>",
                      template="plotly_white", height=820, xaxis={"visible": False}, yaxis={"visible": False},
                      legend={"itemsizing": "constant", "font": {"size": 11}})
    plot_id = "tailor-map"
    page = fig.to_html(include_plotlyjs=True, full_html=True, div_id=plot_id,
                       post_script=_HOVER_SCRIPT.replace("{plot_id}", plot_id))
    page = page.replace("<head>", f"<head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>{_CARD_STYLE}", 1)
    page = page.replace("<body>", "<body><div id=\"tailor-card\"></div>", 1)
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)

