"""Between Arrow fixed-size-list columns (how vectors are stored) and numpy matrices."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def to_matrix(column: pa.ChunkedArray | pa.FixedSizeListArray) -> np.ndarray:
    """(N,) fixed-size lists of D floats → (N, D) float32, without a Python loop."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_fixed_size_list(array.type):
        raise TypeError(f"expected a fixed-size list column, got {array.type}")
    if array.null_count:
        raise ValueError(f"{array.null_count} vectors are null")
    flat = array.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(len(array), array.type.list_size)


def to_fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """(N, D) → (N,) fixed-size lists of D float32."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected an (N, D) matrix, got shape {matrix.shape}")
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), matrix.shape[1])
