"""Sentence embeddings of the text column (all-MiniLM-L6-v2 offline by default, or any encoder)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa

from prunekit.corpus.step import EMBEDDING, TEXT, Step, check_model_spec, embedding_array, with_column
from prunekit.errors import PrunekitError

MAX_THREADS = 1024  # torch refuses (or overflows on) absurd thread counts


@dataclass
class EmbedStep(Step):
    name = "embed"
    model: str = "all-minilm-l6-v2"
    batch_size: int = 64
    threads: int | None = None  # torch threads per process (None: torch's default, one per core)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise PrunekitError(f"batch_size={self.batch_size}: use 1 or more texts per batch")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise PrunekitError(f"threads={self.threads}: use 1 to {MAX_THREADS} (or leave it out: one per core)")

    def provides(self) -> tuple[str, ...]:
        return (EMBEDDING,)

    def check(self) -> None:
        check_model_spec(self.model, ("all-minilm-l6-v2",), "sentence model")

    def run(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from prunekit.data.embed import text_embeddings

        for batch in batches:
            vectors = text_embeddings(batch.column(TEXT).to_pylist(), self.batch_size, self.threads,
                                      model=self.model)
            yield with_column(batch, EMBEDDING, embedding_array(vectors.numpy()))
