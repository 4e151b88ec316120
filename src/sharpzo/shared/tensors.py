"""Tensors on the wire: ``{dtype, shape, data}`` with base64 of little-endian bytes."""

from __future__ import annotations

import base64
import binascii
import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

WireDType = Literal["float32", "float16"]

_NUMPY_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
}


class Tensor(BaseModel):
    """A dense float tensor. ``data`` is base64 of the little-endian, C-order bytes."""

    dtype: WireDType = Field(description="Element type: float32 or float16.")
    shape: list[int] = Field(description="Dimensions, outermost first.", max_length=8)
    data: str = Field(description="Base64 of the little-endian, C-order element bytes.")

    @model_validator(mode="after")
    def _check_size(self) -> Tensor:
        if any(n < 0 for n in self.shape):
            raise ValueError(f"shape {self.shape} has a negative dimension")
        expected = math.prod(self.shape) * _NUMPY_DTYPES[self.dtype].itemsize
        # base64 length is exact for canonical padding: 4 * ceil(n / 3)
        if len(self.data) != 4 * math.ceil(expected / 3):
            raise ValueError(
                f"data holds {len(self.data)} base64 characters, but shape {self.shape} "
                f"of {self.dtype} needs {4 * math.ceil(expected / 3)}"
            )
        return self

    def to_numpy(self) -> np.ndarray:
        """Decode to a native-endian numpy array (a fresh, writable copy)."""
        try:
            raw = base64.b64decode(self.data, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"data is not valid base64: {exc}") from exc
        dtype = _NUMPY_DTYPES[self.dtype]
        if len(raw) != math.prod(self.shape) * dtype.itemsize:
            raise ValueError(f"data decodes to {len(raw)} bytes, which does not match shape {self.shape}")
        return np.frombuffer(raw, dtype=dtype).reshape(self.shape).astype(dtype.newbyteorder("="))

    @classmethod
    def from_numpy(cls, array: np.ndarray, dtype: WireDType = "float32") -> Tensor:
        wire = np.ascontiguousarray(array, dtype=_NUMPY_DTYPES[dtype])
        return cls(dtype=dtype, shape=list(wire.shape), data=base64.b64encode(wire.tobytes()).decode("ascii"))
