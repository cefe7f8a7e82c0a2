"""The per-product columns of a catalog index — id, category, image, data root and every catalog attribute — as
one Arrow table, and the read-only views the index hands its callers.

On disk they are one Arrow IPC file (``index-<token>.arrow``), uncompressed and memory-mapped: opening it reads
its schema and no rows, so an index of 10^7 products opens about as fast as one of 10^4 (measured against
Parquet, which must decode every row to Arrow memory on open: 1.2 s and 600 MB at 10^7 rows, the IPC file
0.3 s and no row in memory). The category, the data root and the attributes are dictionary-encoded with a
sorted dictionary, so a column's codes (what filters and the category vote compare) are its indices as they
lie in the file; ids and images, distinct per product, are plain strings. The file also holds the positions
of the products in id order, so finding a product by id is a binary search in the mapped file, not a dict of
every id built at open.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ID, LABEL, IMAGE, ROOT = "id", "label", "image", "root"
ATTRIBUTE = "attributes/{}"  # a catalog attribute's column (prefixed: an attribute may be called "id")
ID_ORDER = "id order"  # the positions of the products sorted by id (stable: equal ids by position)
BATCH_ROWS = 1 << 24  # rows per record batch of the file: one batch up to 16.7 M products (codes read without a copy)
ITERATION_ROWS = 1 << 16  # rows converted to Python at once when a view is iterated


class Column(Sequence[str]):
    """A read-only sequence of one string column's values, read from the Arrow column on demand: indexing,
    slicing and iterating give Python strings without holding the whole column as Python objects."""

    def __init__(self, values: pa.ChunkedArray):
        self.array = values

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return self.array.to_pylist()[item] if item.step not in (None, 1) else \
                self.array.slice(*_bounds(item, len(self))).to_pylist()
        if isinstance(item, (int, np.integer)):
            if not -len(self) <= item < len(self):
                raise IndexError(f"position {item} of a column of {len(self)}")
            return self.array[int(item) % len(self)].as_py()
        return self.array.take(pa.array(np.asarray(item, dtype=np.int64))).to_pylist()

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self), ITERATION_ROWS):
            yield from self.array.slice(start, ITERATION_ROWS).to_pylist()

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and bool(equal_to(self.array, value).any())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Column):
            return self.array.equals(other.array) or list(self) == list(other)
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(other) == len(self) and list(self) == list(other)
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        shown = self[:5]
        return f"Column({shown}{'…' if len(self) > 5 else ''}, {len(self)} values)"

    def tolist(self) -> list[str]:
        return self.array.to_pylist()


def _bounds(item: slice, n: int) -> tuple[int, int]:
    start, stop, _ = item.indices(n)
    return start, max(0, stop - start)


def strings(values: Sequence[str] | Column, n: int | None = None) -> pa.ChunkedArray:
    """``values`` as an Arrow string column: a view's own column as it is (no copy), a Python list converted;
    ``n`` copies of one string (a single data root) as a one-value dictionary column."""
    if isinstance(values, Column):
        return values.array
    if isinstance(values, (str, Path)):
        return pa.chunked_array([pa.DictionaryArray.from_arrays(pa.array(np.zeros(n or 0, np.int32)),
                                                                pa.array([str(values)]))])
    try:
        return pa.chunked_array([pa.array(values, pa.string())])
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # ids given as numbers, say: as str() writes them
        return pa.chunked_array([pa.array([str(v) for v in values], pa.string())])


def sorted_codes(values: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A column's distinct values, sorted, and each product's value as its number among them (``np.unique``'s
    ``return_inverse``). A column written by :func:`write` already holds both (its sorted dictionary and
    indices), read without a copy when it is one batch; any other is encoded once here."""
    chunks = values.chunks
    if not chunks:
        return np.array([], dtype=str), np.zeros(0, dtype=np.int32)
    if not (pa.types.is_dictionary(values.type) and values.null_count == 0
            and all(c.dictionary.equals(chunks[0].dictionary) for c in chunks[1:])):
        plain = values.cast(pa.string()) if pa.types.is_dictionary(values.type) else values
        chunks = [pc.dictionary_encode(pc.fill_null(plain.combine_chunks(), ""))]
    dictionary = np.asarray(chunks[0].dictionary.to_pylist(), dtype=str)
    indices = [c.indices.to_numpy(zero_copy_only=False) for c in chunks]
    codes = indices[0] if len(indices) == 1 else np.concatenate(indices)
    if len(dictionary) > 1 and not (dictionary[:-1] < dictionary[1:]).all():  # not sorted (or repeated)
        dictionary, rank = np.unique(dictionary, return_inverse=True)
        codes = rank[codes]
    return dictionary, codes


def encoded(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """A string column dictionary-encoded with a sorted dictionary (what :func:`sorted_codes` reads back as is)."""
    dictionary, codes = sorted_codes(values)
    return pa.chunked_array([pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32, copy=False)),
                                                            pa.array(dictionary, pa.string()))])


def equal_to(values: pa.ChunkedArray, value: str) -> np.ndarray:
    """``(N,)`` booleans: where the column holds ``value`` (a dictionary column compared by its codes)."""
    dictionary, codes = sorted_codes(values) if pa.types.is_dictionary(values.type) else (None, None)
    if dictionary is None:
        return pc.fill_null(pc.equal(values, value), False).to_numpy(zero_copy_only=False)
    where = np.searchsorted(dictionary, value)
    if where == len(dictionary) or dictionary[where] != value:
        return np.zeros(len(values), dtype=bool)
    return codes == where


def id_order(ids: pa.ChunkedArray) -> np.ndarray:
    """The positions of ``ids`` in id order; equal ids by position (Arrow's sort is stable)."""
    return pc.sort_indices(ids).to_numpy()


def find(ids: pa.ChunkedArray, order: np.ndarray | pa.ChunkedArray, product_id: str) -> int | None:
    """The position of ``product_id`` (the last, if it is there twice): a binary search through ``order``
    (:func:`id_order`, or the file's column of it, read where the search looks), reading about log2(N) ids."""
    at = (lambda i: order[i].as_py()) if isinstance(order, pa.ChunkedArray) else (lambda i: int(order[i]))
    after = bisect.bisect_right(range(len(order)), product_id, key=lambda i: ids[at(i)].as_py())
    if after and ids[at(after - 1)].as_py() == product_id:
        return at(after - 1)
    return None


def table(ids: Sequence[str], labels: Sequence[str], images: Sequence[str], roots: Sequence[str] | str,
          attributes: Mapping[str, Sequence[str]]) -> pa.Table:
    """The columns of ``n = len(ids)`` products as one table (views' columns taken as they are)."""
    n = len(ids)
    columns = {ID: strings(ids), LABEL: strings(labels), IMAGE: strings(images), ROOT: strings(roots, n)}
    columns.update({ATTRIBUTE.format(name): strings(values) for name, values in attributes.items()})
    return pa.table(columns)


def attribute_names(columns: pa.Table) -> list[str]:
    prefix = ATTRIBUTE.format("")
    return [c[len(prefix):] for c in columns.column_names if c.startswith(prefix)]


def write(columns: pa.Table, order: np.ndarray, file) -> None:
    """Write ``columns`` to the open binary ``file`` as an Arrow IPC file: the category, root and attribute
    columns dictionary-encoded (sorted), ids and images plain, and ``order`` (:func:`id_order`) beside them."""
    out = {}
    for name in columns.column_names:
        values = columns[name]
        out[name] = values.cast(pa.string()) if name in (ID, IMAGE) and pa.types.is_dictionary(values.type) \
            else values if name in (ID, IMAGE) else encoded(values)
    out[ID_ORDER] = pa.chunked_array([pa.array(np.asarray(order, dtype=np.int64))])
    whole = pa.table(out)
    with pa.ipc.new_file(file, whole.schema) as writer:
        writer.write_table(whole, max_chunksize=BATCH_ROWS)


def read(path: str | Path) -> tuple[pa.Table, pa.ChunkedArray]:
    """The columns of a file :func:`write` wrote and its id order, memory-mapped (no row read until used)."""
    whole = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    return whole.drop_columns([ID_ORDER]), whole[ID_ORDER]
