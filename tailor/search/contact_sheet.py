"""A contact sheet for ``tailor similar``: the query beside its nearest catalog products."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image

from tailor.evaluation.plots import plt
from tailor.search.index import Neighbour


def _show(ax, path: Path | str, caption: str, colour: str = "black") -> None:
    try:
        with Image.open(path) as image:
            ax.imshow(image.convert("RGB"))
    except OSError:
        ax.text(0.5, 0.5, "image\nunavailable", ha="center", va="center", fontsize=8, color="grey")
    ax.set_xticks([]), ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(2.5 if colour != "black" else 0.5)
    ax.set_title(caption, fontsize=7.5, color=colour)


def contact_sheet(query: Path | str, neighbours: Sequence[Neighbour], image_paths: Sequence[Path | str],
                  path: str | Path, columns: int = 6) -> Path:
    """The query first (framed), then each look-alike with its id, class and look-alike score, best first."""
    cells = 1 + len(neighbours)
    columns = min(columns, cells)
    rows = -(-cells // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.1 * columns, 2.35 * rows), squeeze=False,
                             constrained_layout=True)
    flat = list(axes.flat)
    _show(flat[0], query, f"query\n{Path(query).name}", colour="#d62728")
    for ax, neighbour, image in zip(flat[1:], neighbours, image_paths):
        _show(ax, image, f"{neighbour.id} · {neighbour.score:.2f}\n{neighbour.label}")
    for ax in flat[cells:]:
        ax.axis("off")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
