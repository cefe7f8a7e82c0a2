"""Category names as vectors, offline.

The encoder is WordLlama's 256-d static token embedding (MIT), which ships *inside* its PyPI wheel:
``wordllama/weights/l2_supercat_256.safetensors`` with its tokenizer at
``wordllama/tokenizers/l2_supercat_tokenizer_config.json``. ``WordLlama.load()`` looks for the tokenizer under
another folder name and then tries to download it, so the inference object is built here from the packaged files
themselves: no network, about half a second, and the same vectors on every machine.

A static token model knows words by their pieces ("Tshirts" is "T", "sh", "irts"), so a name is embedded as a
short phrase (:func:`category_phrase`): lower-case words, ``and`` kept, the catalog's place of the category after
it. The encoder is read once per process.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from typing import Sequence

import numpy as np
import torch

WEIGHTS = "weights/l2_supercat_256.safetensors"
TOKENIZER = "tokenizers/l2_supercat_tokenizer_config.json"


class TextModelError(RuntimeError):
    """The packaged text model is missing or unreadable."""


class TextEncoder:
    """Unit-length vectors for short texts (category names), from WordLlama's packaged files."""

    def __init__(self):
        try:
            from safetensors import safe_open
            from tokenizers import Tokenizer
            from wordllama.inference import WordLlamaInference
            root = importlib.resources.files("wordllama")
        except ImportError as err:
            raise TextModelError(f"names need the wordllama wheel ({err}): pip install wordllama") from None
        weights, tokenizer = root / WEIGHTS, root / TOKENIZER
        for path in (weights, tokenizer):
            if not path.is_file():
                raise TextModelError(f"the wordllama wheel has no {path}: reinstall it (pip install --force-reinstall "
                                     f"wordllama)")
        with safe_open(str(weights), framework="np") as f:
            embedding = f.get_tensor("embedding.weight")
        self._model = WordLlamaInference(embedding, Tokenizer.from_file(str(tokenizer)))
        self.dim = int(embedding.shape[1])

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), dim) float32, unit rows; an empty text gets a zero row."""
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.dim)
        vectors = np.asarray(self._model.embed(texts, norm=False), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return torch.from_numpy(np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0))


@functools.lru_cache(maxsize=1)
def text_encoder() -> TextEncoder:
    """The process's one :class:`TextEncoder` (read on first use)."""
    return TextEncoder()


def words(name: str) -> str:
    """A name as plain lower-case words: ``"Tshirts"`` → ``"t shirts"``, ``"Kurta Sets"`` → ``"kurta sets"``."""
    name = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)       # camelCase → two words
    name = re.sub(r"^T(?=shirt)", "T ", name)                # the catalog's "Tshirts"
    return re.sub(r"[^0-9a-zA-Z]+", " ", name).strip().lower()


def category_phrase(name: str, parents: Sequence[str] = ()) -> str:
    """The text a category is embedded from: its words, then its parents' in the taxonomy that differ from
    them (``"Kurtis"`` under Apparel › Topwear → ``"kurtis topwear apparel"``)."""
    own = words(name)
    extra = [words(p) for p in parents if p and words(p) not in own]
    return " ".join([own, *dict.fromkeys(extra)])
