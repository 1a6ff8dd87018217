"""Sparsity patterns: unstructured, or N:M (N nonzeros kept in every group of M consecutive input weights)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from prunekit.errors import PrunekitError


@dataclass(frozen=True)
class SparsityPattern:
    """`n` and `m` are both 0 for unstructured sparsity."""

    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float:
        """The sparsity an N:M pattern implies (fraction removed)."""
        return 1.0 - self.n / self.m if self.is_nm else float("nan")

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else "unstructured"

    @classmethod
    def parse(cls, text: str | None) -> SparsityPattern:
        if text is None or text.strip().lower() in ("", "unstructured", "none", "0:0"):
            return cls()
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
        if not match:
            raise PrunekitError(f"malformed pattern {text!r}: use 'unstructured' or N:M such as 2:4 or 4:8")
        n, m = int(match.group(1)), int(match.group(2))
        if m < 2 or n < 1 or n >= m:
            raise PrunekitError(
                f"invalid N:M pattern {text!r}: need 1 <= N < M (N weights kept in every M), e.g. 2:4 or 4:8"
            )
        return cls(n, m)
