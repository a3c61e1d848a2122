"""Memory-mapped safetensors: weights that page in as they are read and can give their pages back.

`map_safetensors(path)` returns a file's tensors as views of one private (copy-on-write) mapping of it, so
loading costs no memory until a tensor is read. `release_pages(tensors)` then drops pages already read
from this process's resident set (madvise MADV_DONTNEED; the kernel's page cache keeps them, and a later
read faults them back in from the file): the native decoder packs a layer, releases its source pages and
goes on, so its peak holds the packed weights and one layer, not the packed weights and the whole file.

The file format is safetensors' (https://github.com/huggingface/safetensors): an 8-byte little-endian header
length, a JSON header of {name: {dtype, shape, data_offsets}}, then the data. safetensors' own loader maps
the file too but keeps its mapping private, which is why this module reads the header itself.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import warnings
import weakref
from collections.abc import Iterable
from pathlib import Path

import torch

from quamba_edge.errors import QuambaEdgeError

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}

# (address, length, mapping) of every live mapping map_safetensors made (weak: a mapping goes when its tensors do).
_MAPS: list[tuple[int, int, weakref.ref]] = []


def map_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """{name: tensor} of a safetensors file, each a view of one copy-on-write mapping of it (writes stay private
    to this process and are lost by release_pages). Raises QuambaEdgeError for a file that is not safetensors."""
    path = Path(path)
    with open(path, "rb") as f:
        size = path.stat().st_size
        if size < 8:
            raise QuambaEdgeError(f"{path} is not a safetensors file ({size} bytes). Fix: write it again.")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    try:
        n = int.from_bytes(mm[:8], "little")
        header = json.loads(mm[8 : 8 + n])
        assert isinstance(header, dict)
    except (ValueError, AssertionError, UnicodeDecodeError):
        raise QuambaEdgeError(f"{path} has no valid safetensors header. Fix: write it again.") from None
    base = 8 + n
    tensors: dict[str, torch.Tensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (start, end) = DTYPES.get(entry.get("dtype")), entry["shape"], entry["data_offsets"]
        if dtype is None or base + end > size or end < start:
            raise QuambaEdgeError(f"{path}: tensor {name!r} has dtype {entry.get('dtype')} or offsets past the "
                                  "file's end. Fix: write it again.")
        count = (end - start) // dtype.itemsize
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        with warnings.catch_warnings():  # a copy-on-write mapping is writable: torch has nothing to warn about
            warnings.simplefilter("ignore")
            tensors[name] = torch.frombuffer(mm, dtype=dtype, count=count, offset=base + start).reshape(shape)
    address = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    _MAPS[:] = [m for m in _MAPS if m[2]() is not None]
    _MAPS.append((address, len(mm), weakref.ref(mm)))
    return tensors


def release_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Drop the pages of these tensors that lie in a map_safetensors mapping from the resident set; the next
    read brings them back from the file. Tensors elsewhere (computed, copied) are left alone. Pages are
    rounded outwards: a neighbour sharing a page simply faults it back in. Returns the bytes advised."""
    live = [(a, n, m()) for a, n, m in _MAPS]
    released = 0
    page = mmap.PAGESIZE
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        address = t.data_ptr()
        for start, length, mm in live:
            if mm is not None and nbytes and start <= address < start + length:
                lo = (address - start) // page * page
                hi = min(length, -(-(address - start + nbytes) // page) * page)
                mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
                released += hi - lo
                break
    return released
