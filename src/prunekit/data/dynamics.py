"""Training dynamics recorded from the user's own training loop, and the scores computed from them.

    rec = TrainingDynamics()
    for epoch in range(epochs):
        for ids, x, y in loader:
            logits = model(x)
            rec.record(ids, logits, y, epoch=epoch, run=seed)
            ...
    ids, scores = rec.scores("el2n")

What is stored: for every (run, epoch, example) the logits (float32) and the assigned label, keyed by a stable
example id (all ints or all strings). `rec.ids` lists the ids in first-seen order; every score tensor follows that
order. Memory: N * E * C float32 per run (50k examples x 200 epochs x 10 classes = 400 MB).

Convention: every score is oriented HIGHER = HARDER (see `prunekit.data.scores`). Scores averaged over runs
(seeds) are means of the per-run values. Which epochs each score reads by default (`epochs` is a slice of the
sorted list of recorded epochs, `rec.epochs`, so `slice(0, 10)` is the first ten recorded epochs):

- el2n: ONE early epoch, the one at position ceil(E/10) - 1 (E = number of recorded epochs): Paul et al. (2021) score
  CIFAR-10 at epoch 20 of 200, averaged over seeds. With E = 200 that is the 20th recorded epoch.
- forgetting: all epochs (Toneva et al., 2019, count over the whole of training). Never-learned examples get the
  window length, more than any learned example can reach.
- aum: all epochs (Pleiss et al., 2020, average the margin until the first learning-rate drop: pass that window).
- entropy: the last recorded epoch (the uncertainty of the trained model).

Missing records: with `missing="error"` (default) an example without a record in some (run, epoch) of the window
is an error naming it, since a silent gap would bias every score (use DataLoader(drop_last=False)). With
`missing="skip"` each example is scored from the records it has: means over its records, forgetting transitions
between its consecutive recorded epochs, run averages over the runs where it appears. An example with no record
at all in the window is always an error.

GraNd needs per-example gradients rather than logits: `per_example_grad_norms` computes them in one vectorised
pass (torch.func) over all trainable parameters; average the norms over seeds with `prunekit.data.scores.grand`.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.data import scores as S
from prunekit.data.registry import TRAINING_DYNAMICS, get_score, score_names
from prunekit.errors import PrunekitError

MISSING = ("error", "skip")
FORMAT = "prunekit.training_dynamics"
VERSION = 1

ExampleId = int | str
Statistic = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_epochs(method: str, num_epochs: int) -> slice:
    """The window of recorded-epoch positions a score reads when the caller gives none (see the module doc)."""
    epochs = get_score(method).epochs
    if epochs == "early":
        at = max(1, math.ceil(num_epochs / 10)) - 1
        return slice(at, at + 1)
    if epochs == "last":
        return slice(num_epochs - 1, num_epochs)
    return slice(0, num_epochs)


def _normalize_ids(ids: Sequence[ExampleId] | torch.Tensor | np.ndarray) -> list[ExampleId]:
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        if ids.dtype in (torch.bool, np.bool_) or ids.ndim != 1:
            raise PrunekitError(f"ids have shape {tuple(ids.shape)}, dtype {ids.dtype}: pass one int or str per row")
        ids = ids.tolist()
    if isinstance(ids, str):
        raise PrunekitError("ids is a single string: pass a sequence with one id per row")
    out = []
    for i in ids:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer, str)):
            raise PrunekitError(f"example id {i!r} is a {type(i).__name__}: ids must be ints or strings")
        out.append(i if isinstance(i, str) else int(i))
    return out


def _first_duplicate(ids: list[ExampleId]) -> ExampleId | None:
    seen: set[ExampleId] = set()
    for i in ids:
        if i in seen:
            return i
        seen.add(i)
    return None


def _grown(array: np.ndarray, size: int, fill: int | bool) -> np.ndarray:
    """`array` with room for at least `size` entries, the new ones set to `fill` (capacity doubles)."""
    if array.shape[0] >= size:
        return array
    bigger = np.full(max(size, 2 * array.shape[0], 64), fill, dtype=array.dtype)
    bigger[: array.shape[0]] = array
    return bigger


class TrainingDynamics:
    """Per-example logits over training epochs and runs; see the module docstring."""

    def __init__(self, num_classes: int | None = None) -> None:
        if num_classes is not None and num_classes < 2:
            raise PrunekitError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
        self._num_classes = num_classes
        self._ids: list[ExampleId] = []
        self._index: dict[ExampleId, int] = {}
        self._id_kind: type | None = None
        self._labels = np.zeros(0, dtype=np.int64)
        self._seen: dict[tuple[int, int], np.ndarray] = {}
        self._chunks: list[tuple[int, int, np.ndarray, torch.Tensor]] = []

    @property
    def ids(self) -> list[ExampleId]:
        return list(self._ids)

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(self._labels[: len(self._ids)].copy())

    @property
    def epochs(self) -> list[int]:
        return sorted({epoch for _, epoch in self._seen})

    @property
    def runs(self) -> list[int]:
        return sorted({run for run, _ in self._seen})

    @property
    def num_classes(self) -> int | None:
        return self._num_classes

    def __len__(self) -> int:
        return len(self._ids)

    def record(
        self,
        ids: Sequence[ExampleId] | torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        epoch: int,
        run: int = 0,
    ) -> None:
        """Store one batch of logits [B, C] with the assigned labels [B] of the examples `ids`."""
        ids = _normalize_ids(ids)
        logits, labels = self._check_batch(ids, logits, labels, epoch, run)
        idx = self._check_new_records(ids, labels.numpy(), epoch, run)
        self._commit(ids, idx, labels.numpy(), logits, epoch, run)

    def _check_batch(
        self, ids: list[ExampleId], logits: torch.Tensor, labels: torch.Tensor, epoch: int, run: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for name, value in (("epoch", epoch), ("run", run)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise PrunekitError(f"{name}={value!r}: pass a non-negative int")
        logits = torch.as_tensor(logits).detach()
        if logits.dim() != 2 or logits.shape[0] != len(ids):
            raise PrunekitError(f"logits have shape {tuple(logits.shape)} for {len(ids)} ids: pass [batch, classes]")
        classes = self._num_classes if self._num_classes is not None else logits.shape[1]
        if logits.shape[1] != classes or classes < 2:
            raise PrunekitError(f"logits have {logits.shape[1]} classes but {classes} were expected: one model head")
        logits = logits.to("cpu", torch.float32)
        S.check_finite(logits, f"logits of epoch {epoch} (run {run})")
        labels = S.check_labels(torch.as_tensor(labels).detach().cpu(), len(ids), classes, "training-dynamics")
        kinds = {type(i) for i in ids} | ({self._id_kind} if self._id_kind else set())
        if len(kinds) > 1:
            raise PrunekitError("example ids mix ints and strings: use one kind of id for the whole dataset")
        if len(set(ids)) != len(ids):
            dup = _first_duplicate(ids)
            raise PrunekitError(f"example {dup!r} appears twice in one batch of epoch {epoch} (run {run})")
        return logits, labels

    def _check_new_records(self, ids: list[ExampleId], labels: np.ndarray, epoch: int, run: int) -> np.ndarray:
        """Indices of `ids` (new ones numbered after the known ones); fails before anything is stored."""
        known = len(self._ids)
        idx = np.empty(len(ids), dtype=np.int64)
        fresh = 0
        for n, i in enumerate(ids):
            j = self._index.get(i)
            if j is None:
                j = known + fresh
                fresh += 1
            idx[n] = j
        old = idx < known
        seen = self._seen.get((run, epoch))
        if seen is not None and old.any():
            twice = seen[idx[old]]
            if twice.any():
                dup = ids[int(np.flatnonzero(old)[np.argmax(twice)])]
                raise PrunekitError(f"example {dup!r} was already recorded for epoch {epoch} (run {run}): record once")
        clash = old.copy()
        clash[old] = self._labels[idx[old]] != labels[old]
        if clash.any():
            n = int(np.argmax(clash))
            raise PrunekitError(
                f"example {ids[n]!r} has label {int(labels[n])} but was recorded before with "
                f"{int(self._labels[idx[n]])}: keep each example's assigned label fixed"
            )
        return idx

    def _commit(
        self, ids: list[ExampleId], idx: np.ndarray, labels: np.ndarray, logits: torch.Tensor, epoch: int, run: int
    ) -> None:
        for n in np.flatnonzero(idx >= len(self._ids)):
            self._index[ids[n]] = len(self._ids)
            self._ids.append(ids[n])
        if ids and self._id_kind is None:
            self._id_kind = type(ids[0])
        if self._num_classes is None:
            self._num_classes = logits.shape[1]
        self._labels = _grown(self._labels, len(self._ids), -1)
        self._labels[idx] = labels
        seen = _grown(self._seen.get((run, epoch), np.zeros(0, dtype=bool)), len(self._ids), False)
        seen[idx] = True
        self._seen[(run, epoch)] = seen
        self._chunks.append((int(run), int(epoch), idx, logits.clone()))

    def scores(
        self, method: str, epochs: slice | None = None, missing: str = "error"
    ) -> tuple[list[ExampleId], torch.Tensor]:
        """(ids in first-seen order, float64 scores [N]), HIGHER = HARDER; see the module doc for the defaults."""
        known = score_names(needing=TRAINING_DYNAMICS)
        if method not in known:
            raise PrunekitError(f"unknown training-dynamics score {method!r}: use one of {', '.join(known)}")
        if missing not in MISSING:
            raise PrunekitError(f"missing={missing!r}: use one of {', '.join(MISSING)}")
        if not self._chunks:
            raise PrunekitError("nothing was recorded: call record() from the training loop before scoring")
        recorded = self.epochs
        window = recorded[epochs if epochs is not None else default_epochs(method, len(recorded))]
        if not window:
            raise PrunekitError(f"epochs={epochs} selects none of the {len(recorded)} recorded epochs: widen the slice")
        if method == "forgetting":
            correct, present = self._per_record(window, lambda z, y: (z.argmax(-1) == y).double())
            self._check_missing(present, window, missing)
            return self.ids, self._forgetting(correct > 0.5, present)
        statistic: Statistic = get_score(method).per_record
        values, present = self._per_record(window, statistic)
        self._check_missing(present, window, missing)
        return self.ids, _masked_mean(values, present)

    def _per_record(self, window: list[int], statistic: Statistic) -> tuple[torch.Tensor, torch.Tensor]:
        """statistic(logits, labels) for every stored record in the window: values and presence [runs, W, N]."""
        runs = {run: r for r, run in enumerate(self.runs)}
        where = {epoch: w for w, epoch in enumerate(window)}
        shape = (len(runs), len(window), len(self._ids))
        values = torch.zeros(shape, dtype=torch.float64)
        present = torch.zeros(shape, dtype=torch.bool)
        labels = torch.from_numpy(self._labels)
        chunks = [c for c in self._chunks if c[1] in where]
        # a few large calls instead of one per training batch: per-call overhead dominates small batches
        for block in _blocks(chunks, rows=1 << 18):
            cells = torch.from_numpy(
                np.concatenate([np.full(len(c[2]), runs[c[0]] * len(window) + where[c[1]]) for c in block])
            )
            rows = torch.from_numpy(np.concatenate([c[2] for c in block]))
            logits = torch.cat([c[3] for c in block]).double()
            flat_values, flat_present = values.view(-1, shape[2]), present.view(-1, shape[2])
            flat_values[cells, rows] = statistic(logits, labels[rows]).double()
            flat_present[cells, rows] = True
        return values, present

    def _check_missing(self, present: torch.Tensor, window: list[int], missing: str) -> None:
        never = ~present.any(dim=(0, 1))
        if never.any():
            example = self._ids[int(never.nonzero()[0])]
            raise PrunekitError(
                f"example {example!r} has no record in epochs {window[0]}..{window[-1]}: widen the epochs or record it"
            )
        if missing == "error" and not bool(present.all()):
            r, w, n = (int(v) for v in (~present).nonzero()[0])
            raise PrunekitError(
                f"example {self._ids[n]!r} has no record for epoch {window[w]} (run {self.runs[r]}): record every "
                "example every epoch (DataLoader drop_last=False) or pass missing='skip'"
            )

    def _forgetting(self, correct: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        per_run = torch.stack([S.forgetting_events(c, p) for c, p in zip(correct, present, strict=True)])
        return _masked_mean(per_run.unsqueeze(1), present.any(dim=1, keepdim=True))

    def save(self, path: Path | str, overwrite: bool = False) -> None:
        """Write every record to one Parquet file, atomically (temporary sibling, then rename)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path).expanduser()
        if not self._chunks:
            raise PrunekitError("nothing was recorded: call record() before save()")
        if path.exists() and (path.is_dir() or not overwrite):
            raise PrunekitError(f"{path} already exists: choose another path or pass overwrite=True")
        idx = np.concatenate([c[2] for c in self._chunks])
        sizes = [len(c[2]) for c in self._chunks]
        logits = torch.cat([c[3] for c in self._chunks]).numpy()
        ids = np.asarray(self._ids, dtype=np.int64 if self._id_kind is int else object)[idx]
        table = pa.table(
            {
                "run": np.repeat([c[0] for c in self._chunks], sizes).astype(np.int64),
                "epoch": np.repeat([c[1] for c in self._chunks], sizes).astype(np.int64),
                "id": pa.array(ids, type=pa.int64() if self._id_kind is int else pa.string()),
                "label": self._labels[idx],
                "logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), logits.shape[1]),
            }
        )
        meta = {"format": FORMAT, "version": VERSION, "num_classes": self._num_classes}
        table = table.replace_schema_metadata({"prunekit": json.dumps(meta)})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path | str) -> TrainingDynamics:
        """Read a file written by `save`, re-validating every record."""
        import pyarrow.parquet as pq

        path = Path(path).expanduser()
        if not path.is_file():
            raise PrunekitError(f"{path} does not exist: pass the file written by TrainingDynamics.save")
        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(b"prunekit")
        meta = json.loads(raw) if raw else {}
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise PrunekitError(f"{path} is not a prunekit training-dynamics file (version {VERSION})")
        rec = cls(num_classes=meta["num_classes"])
        runs, epochs = table["run"].to_numpy(), table["epoch"].to_numpy()
        ids = table["id"].to_numpy(zero_copy_only=False)
        labels = torch.from_numpy(table["label"].to_numpy().copy())
        flat = table["logits"].combine_chunks().flatten().to_numpy()
        logits = torch.from_numpy(flat.reshape(len(table), meta["num_classes"]).copy())
        # rows were written chunk by chunk: a new chunk starts wherever (run, epoch) changes
        starts = np.flatnonzero(np.r_[True, (runs[1:] != runs[:-1]) | (epochs[1:] != epochs[:-1]), True])
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            rec.record(ids[a:b].tolist(), logits[a:b], labels[a:b], epoch=int(epochs[a]), run=int(runs[a]))
        return rec


def _blocks(chunks: list[tuple[int, int, np.ndarray, torch.Tensor]], rows: int) -> list[list]:
    """Consecutive groups of chunks holding about `rows` records each."""
    blocks: list[list] = [[]]
    size = 0
    for chunk in chunks:
        if size >= rows:
            blocks.append([])
            size = 0
        blocks[-1].append(chunk)
        size += len(chunk[2])
    return [b for b in blocks if b]


def _masked_mean(values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean over the two leading dims of `values` [R, W, N], counting only present entries."""
    total = torch.where(present, values, torch.zeros_like(values)).sum(dim=(0, 1))
    return total / present.sum(dim=(0, 1)).clamp_min(1).double()


def per_example_grad_norms(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> torch.Tensor:
    """||d loss(model(x_i), y_i) / d theta||_2 over all trainable parameters, for each row i: float64 [B].

    One vectorised pass (torch.func.vmap of grad); parameters and mode are left as they are. Batch norm in train
    mode would mix examples, so it is refused: call model.eval() first. Dropout draws independently per example."""
    from torch.func import functional_call, grad, vmap

    if model.training and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise PrunekitError("the model has batch norm in train mode, which mixes examples: call model.eval() first")
    trainable = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise PrunekitError("the model has no trainable parameters: GraNd needs requires_grad=True on some")
    if inputs.shape[0] != labels.shape[0]:
        raise PrunekitError(f"{inputs.shape[0]} inputs but {labels.shape[0]} labels: pass one label per input")
    fixed = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))

    def example_loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**params, **fixed}, (x.unsqueeze(0),))
        return loss(out, y.unsqueeze(0))

    with torch.enable_grad():
        grads = vmap(grad(example_loss), in_dims=(None, 0, 0), randomness="different")(trainable, inputs, labels)
    squares = sum(g.detach().flatten(1).double().square().sum(dim=1) for g in grads.values())
    return squares.sqrt()
