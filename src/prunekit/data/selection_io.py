"""Writing a data selection: every example's score, the kept subset, and a summary, all or nothing.

The output directory holds:

- scores.parquet: one row per example in dataset order: id (int64 or string), score (float64, HIGHER = HARDER),
  label (int64, null when the data has no labels), kept (bool).
- kept.parquet: id, score, label of the kept examples only, in dataset order (the order of `ids`).
- summary.json: the caller's `summary` (strategy, score method, seed, ...) plus counts computed from the data,
  which take precedence over same-named keys: examples, kept, keep_fraction (kept / examples, the fraction actually
  kept) and, with labels, per_class {label: {"kept", "total"}}.

Everything is validated before anything is written, and the files are written into a temporary sibling directory
renamed into place at the end (`prunekit.outputs.atomic_directory`), so an interrupted run leaves nothing
that looks complete.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from prunekit.data.select import check_ids
from prunekit.errors import PrunekitError
from prunekit.outputs import atomic_directory, check_output

ExampleId = int | str


def selection_summary(
    scores: torch.Tensor, kept: torch.Tensor, labels: torch.Tensor | None, summary: dict[str, object]
) -> dict[str, object]:
    """The caller's summary plus the counts computed from the selection (see the module doc)."""
    n, k = len(scores), len(kept)
    out: dict[str, object] = {**summary, "examples": n, "kept": k, "keep_fraction": k / n if n else 0.0}
    if labels is not None:
        classes, totals = np.unique(labels.numpy(), return_counts=True)
        kept_counts = dict(zip(*np.unique(labels[kept].numpy(), return_counts=True), strict=True))
        out["per_class"] = {
            str(int(c)): {"kept": int(kept_counts.get(c, 0)), "total": int(t)}
            for c, t in zip(classes, totals, strict=True)
        }
    return out


def write_selection(
    out_dir: Path | str,
    ids: Sequence[ExampleId],
    scores: torch.Tensor,
    kept: torch.Tensor,
    labels: torch.Tensor | None,
    summary: dict[str, object],
    overwrite: bool = False,
) -> Path:
    """Write scores.parquet, kept.parquet and summary.json into `out_dir` atomically; returns `out_dir`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir).expanduser()
    ids = list(ids)
    id_type = _check_id_kind(ids)
    scores, kept, labels = _check_selection(len(ids), scores, kept, labels)
    document = _summary_json(selection_summary(scores, kept, labels, summary))
    check_output(out_dir, overwrite)
    mask = np.zeros(len(ids), dtype=bool)
    mask[kept.numpy()] = True
    columns = {
        "id": pa.array(ids, type=id_type),
        "score": pa.array(scores.numpy(), type=pa.float64()),
        "label": pa.array(labels.numpy() if labels is not None else [None] * len(ids), type=pa.int64()),
    }
    table = pa.table({**columns, "kept": pa.array(mask)})
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        pq.write_table(table, tmp / "scores.parquet")
        pq.write_table(pa.table(columns).filter(pa.array(mask)), tmp / "kept.parquet")
        (tmp / "summary.json").write_text(document + "\n")
    return out_dir


def _check_id_kind(ids: list[ExampleId]) -> object:
    import pyarrow as pa

    check_ids(ids)
    if all(isinstance(i, str) for i in ids):
        return pa.string()
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in ids):
        return pa.int64()
    raise PrunekitError("example ids must be all ints or all strings: convert them to one kind before writing")


def _check_selection(
    n: int, scores: torch.Tensor, kept: torch.Tensor, labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    scores = torch.as_tensor(scores).detach().cpu().double()
    if scores.shape != (n,):
        raise PrunekitError(f"scores have shape {tuple(scores.shape)} for {n} ids: pass one score per example")
    if not bool(torch.isfinite(scores).all()):
        raise PrunekitError("scores contain NaN or infinite values: recompute them before writing")
    kept = torch.as_tensor(kept).detach().cpu()
    if kept.dim() != 1 or kept.is_floating_point() or kept.dtype == torch.bool:
        raise PrunekitError(f"kept has shape {tuple(kept.shape)}, dtype {kept.dtype}: pass integer indices [K]")
    kept = kept.long()
    if len(kept) and (int(kept.min()) < 0 or int(kept.max()) >= n):
        raise PrunekitError(f"kept indices must lie in [0, {n}): pass the indices returned by select()")
    if len(torch.unique(kept)) != len(kept):
        raise PrunekitError("kept indices repeat: pass each kept example once")
    if labels is not None:
        labels = torch.as_tensor(labels).detach().cpu()
        if labels.shape != (n,) or labels.is_floating_point() or labels.dtype == torch.bool:
            raise PrunekitError(f"labels have shape {tuple(labels.shape)}, dtype {labels.dtype}: pass int [N]")
        labels = labels.long()
    return scores, torch.sort(kept).values, labels


def _summary_json(summary: dict[str, object]) -> str:
    try:
        return json.dumps(_json_ready(summary), indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise PrunekitError(f"the summary cannot be written as JSON ({err}): pass plain numbers and strings") from None


def _json_ready(value: object) -> object:
    """numpy / torch scalars and tensors as plain JSON values; anything else unchanged (json rejects it)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value
