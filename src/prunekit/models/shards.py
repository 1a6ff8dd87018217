"""Reading and writing safetensors checkpoints one tensor (or one layer) at a time.

The `safetensors` library reads single tensors and row ranges lazily, but writes a file only from tensors held in
memory. Tensors a streamed prune leaves unchanged (embeddings, head, norms) can be as large as a whole decoder layer,
so they are copied byte for byte from the input file instead: the format is an 8-byte header length, a JSON header
of dtype/shape/offsets, then the raw data.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from prunekit.errors import PrunekitError

INDEX_NAME = "model.safetensors.index.json"
_COPY_CHUNK = 16 << 20


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: str  # safetensors dtype code, e.g. F32, BF16
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets of the data in `file`
    end: int


def read_header(file: Path) -> dict[str, TensorEntry]:
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    start = 8 + length
    return {
        name: TensorEntry(file, info["dtype"], tuple(info["shape"]), start + info["data_offsets"][0],
                          start + info["data_offsets"][1])
        for name, info in header.items()
        if name != "__metadata__"
    }


class Checkpoint:
    """The tensors of a safetensors checkpoint directory (one file or an index of shards), read on demand."""

    def __init__(self, directory: Path) -> None:
        index = directory / INDEX_NAME
        if index.exists():
            files = sorted({directory / f for f in json.loads(index.read_text())["weight_map"].values()})
        else:
            files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise PrunekitError(f"{directory} has no .safetensors weights: streaming reads safetensors only")
        self.entries: dict[str, TensorEntry] = {}
        for file in files:
            self.entries.update(read_header(file))

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def _entry(self, name: str) -> TensorEntry:
        if name not in self.entries:
            raise PrunekitError(
                f"the checkpoint has no tensor {name!r}: streaming needs tensor names that match the model's own "
                "(a checkpoint saved by transformers); prune it without --stream"
            )
        return self.entries[name]

    def load(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        with safe_open(self._entry(name).file, framework="pt") as f:
            tensor = f.get_tensor(name)
        return tensor if dtype is None else tensor.to(dtype)

    def _row_chunks(self, name: str, chunk: int, stop: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, rows) of a 2-D tensor, `chunk` rows at a time. The file is mapped anew for every chunk: the
        pages a mapping has touched count as the process's memory until it is closed."""
        file = self._entry(name).file
        rows = self.entries[name].shape[0] if stop is None else stop
        for start in range(0, rows, chunk):
            with safe_open(file, framework="pt") as f:
                yield start, f.get_slice(name)[start:start + chunk]

    def rows(self, name: str, ids: torch.Tensor, dtype: torch.dtype, chunk: int = 8192) -> torch.Tensor:
        """Rows `ids` (sorted, unique) of a 2-D tensor."""
        out = []
        for start, block in self._row_chunks(name, chunk, stop=int(ids[-1]) + 1):
            wanted = ids[(ids >= start) & (ids < start + len(block))]
            if len(wanted):
                out.append(block[wanted - start].to(dtype))
        return torch.cat(out)

    def count_zeros(self, name: str, chunk: int = 8192) -> int:
        """Exact zeros in a tensor, reading `chunk` rows at a time."""
        if len(self._entry(name).shape) < 2:
            return int((self.load(name) == 0).sum())
        return sum(int((block == 0).sum()) for _, block in self._row_chunks(name, chunk))


class ShardWriter:
    """Writes a sharded safetensors checkpoint into `directory`, shard after shard, then its index."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.shards: list[tuple[Path, list[str]]] = []
        self.total_size = 0

    def _next_path(self) -> Path:
        return self.directory / f".shard-{len(self.shards):05d}.safetensors"

    def write(self, tensors: dict[str, torch.Tensor]) -> None:
        path = self._next_path()
        save_file({n: t.contiguous() for n, t in tensors.items()}, path, metadata={"format": "pt"})
        self.shards.append((path, list(tensors)))
        self.total_size += sum(t.numel() * t.element_size() for t in tensors.values())

    def copy(self, checkpoint: Checkpoint, names: list[str]) -> None:
        """Copy tensors unchanged, byte for byte, into one new shard."""
        entries = [checkpoint.entries[n] for n in names]
        header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, entry in zip(names, entries, strict=True):
            size = entry.end - entry.begin
            header[name] = {"dtype": entry.dtype, "shape": list(entry.shape), "data_offsets": [offset, offset + size]}
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the format aligns the data to 8 bytes
        path = self._next_path()
        with open(path, "wb") as out:
            out.write(struct.pack("<Q", len(encoded)) + encoded)
            for entry in entries:
                with open(entry.file, "rb") as src:
                    src.seek(entry.begin)
                    left = entry.end - entry.begin
                    while left:
                        block = src.read(min(left, _COPY_CHUNK))
                        if not block:
                            raise PrunekitError(f"{entry.file} is truncated: re-download or re-convert the model")
                        out.write(block)
                        left -= len(block)
        self.shards.append((path, names))
        self.total_size += offset

    def finish(self) -> None:
        """Give the shards their final names and write the index transformers reads."""
        count = len(self.shards)
        weight_map: dict[str, str] = {}
        for number, (path, names) in enumerate(self.shards, start=1):
            final = f"model-{number:05d}-of-{count:05d}.safetensors"
            os.replace(path, self.directory / final)
            os.chmod(self.directory / final, 0o644)  # save_file creates owner-only files
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (self.directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
