"""Running steps over a corpus: local (default, streaming) or on Ray Data, resumable, with an exclusion log.

Layout of the work folder (default: `OUT.work` beside the output; it carries prunekit's `.prunekit-work` marker, so
a `--work-dir` naming a folder of the user's is refused, never emptied):

    00-read/kept/part-*.parquet         the input with ids, validated
    01-embed/kept/...                   each step's surviving rows
    02-select/excluded/...              rows a step dropped: id, reason, score, detail
    NN-name/COMPLETE                    written last: the step's fingerprint (its settings and all before it), counts

Before anything is written, the whole plan is checked: every step's settings, the input read once in full (bytes,
JSON, Parquet, ids, vector lengths), and every column a step reads present in the input or added by an earlier
step. Bad input therefore leaves no `OUT` and no `OUT.work`.

A rerun skips every step whose COMPLETE marker matches. A step runs in `.NN-name.partial-PID-XXXX` (with an
INCOMPLETE marker); it is renamed into place and only then gets its COMPLETE marker, so no folder that looks
finished is ever half-written. Partial folders of processes that died (kill -9) are removed by the next run. The
output folder appears only when everything finished (written aside, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from prunekit.corpus.io import CorpusInfo, inspect_corpus, read_corpus, write_rows
from prunekit.corpus.step import (
    DROP_COLUMNS,
    DROP_DETAIL,
    DROP_REASON,
    DROP_SCORE,
    EMBEDDING,
    ID,
    PRODUCED_BY,
    Step,
    check_vectors,
    groups,
    is_number_type,
    is_vector_type,
)
from prunekit.errors import PrunekitError
from prunekit.outputs import (
    INCOMPLETE,
    atomic_directory,
    check_output,
    check_work_directory,
    remove_stale_temporaries,
    remove_work_directory,
    work_directory,
)
from prunekit.progress import progress_bar

EXECUTORS = ("local", "ray")
EXCLUSION_SCHEMA_NAMES = (ID, "step", "reason", "score", "detail")
WORK_KIND = "corpus"
READ_VERSION = "read-2"  # in the read stage's fingerprint: stages of older prunekit versions are read again
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?:partial|old)(?:-\d+-[0-9a-f]{8})?$")


@dataclass
class PipelineResult:
    out: Path
    rows: int
    kept: int
    dropped: dict[str, int]
    seconds: float
    steps: list[dict] = field(default_factory=list)
    id_column: str = "row numbers"

    def summary(self) -> dict:
        return {"rows": self.rows, "kept": self.kept, "dropped": self.dropped, "seconds": round(self.seconds, 3),
                "rows_per_second": round(self.rows / self.seconds, 1) if self.seconds else None,
                "id_column": self.id_column, "steps": self.steps}


def run_pipeline(
    source: str | Path,
    steps: list[Step],
    out: Path,
    *,
    text_column: str = "text",
    id_column: str | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    work_dir: Path | None = None,
    output_format: str = "parquet",
    keep_embeddings: bool = False,
    batch_size: int = 4096,
    overwrite: bool = False,
    say: Callable[[str], None] = print,
) -> PipelineResult:
    """Read `source`, run `steps` in order, write the kept rows, `excluded.parquet` and `summary.json` to `out`."""
    if executor not in EXECUTORS:
        raise PrunekitError(f"unknown executor {executor!r}: use {' or '.join(EXECUTORS)}")
    if output_format not in ("parquet", "jsonl"):
        raise PrunekitError(f"unknown output format {output_format!r}: use parquet or jsonl")
    source_path = Path(str(source)).expanduser()
    inputs = (source_path,) if source_path.exists() else ()
    out = check_output(Path(out), overwrite, inputs=inputs)
    work = check_work_directory((work_dir or out.with_name(f"{out.name}.work")), WORK_KIND, inputs)
    _check_apart(out, work)
    for step in steps:
        step.check()
    fingerprint = _source_fingerprint(source_path if source_path.exists() else str(source), text_column, id_column)
    info = _read_info(source, work, fingerprint, text_column, id_column, steps, batch_size)
    check_plan(steps, info, str(source))
    if info.id_column is not None and info.id_column != id_column:
        say(f"ids: the input's own {info.id_column!r} field (unique); pass --id-column to choose another")
    elif id_column is None and info.id_note != "row numbers":
        say(f"ids: {info.id_note}")
    runner: _LocalRunner | _RayRunner = _RayRunner(ray_address, batch_size) if executor == "ray" else _LocalRunner(
        batch_size)
    started = time.perf_counter()
    fresh = not work.exists()
    try:
        work = work_directory(work, WORK_KIND, inputs)
        _remove_stale_partials(work)
        stage, rows, records = _run_steps(source, steps, work, runner, info, fingerprint, text_column, batch_size,
                                          executor, say)
    except PrunekitError:
        if fresh and not _finished_steps(work):  # a folder this run made, holding at most the read input
            remove_work_directory(work)
        raise
    finally:
        runner.close()
    with atomic_directory(out, overwrite=overwrite, inputs=inputs) as tmp:
        kept = write_rows(stage / "kept", tmp, output_format, drop=() if keep_embeddings else (EMBEDDING,))
        dropped = _write_exclusions([work / r["stage"] for r in records[1:]], tmp / "excluded.parquet")
        result = PipelineResult(out, rows, kept, dropped, time.perf_counter() - started, records, info.id_note)
        (tmp / "summary.json").write_text(json.dumps(result.summary(), indent=2, default=str) + "\n")
    return result


def _check_apart(out: Path, work: Path) -> None:
    a, b = out.expanduser().resolve(), work.expanduser().resolve()
    if a == b or a.is_relative_to(b) or b.is_relative_to(a):
        raise PrunekitError(f"--work-dir {work} and --out {out} overlap: the work folder must lie outside the "
                            "output (default: OUT.work beside it)")


# --- checks before anything is written -----------------------------------------------------------------------


def input_columns(steps: list[Step]) -> set[str]:
    """Columns the steps read that no earlier step adds: they must come from the input."""
    added: set[str] = set()
    needed: set[str] = set()
    for step in steps:
        needed.update(c for c in step.requires() if c not in added)
        added.update(step.provides())
    return needed


def check_plan(steps: list[Step], info: CorpusInfo, source: str) -> None:
    """Every column each step reads exists (in the input or from an earlier step) and holds what it needs."""
    available: dict[str, pa.DataType | None] = {f.name: f.type for f in info.schema}
    for number, step in enumerate(steps, 1):
        for column, kind in step.requires().items():
            if column not in available:
                maker = PRODUCED_BY.get(column)
                fix = (f"add the {maker} step before it" + (", or give the input that column" if column == EMBEDDING
                                                          else "")) if maker else "give the input that column"
                raise PrunekitError(f"step {number} ({step.name}) needs the column {column!r}, which {source} "
                                    f"(columns: {', '.join(available)}) and the steps before it lack: {fix}")
            kind_found = available[column]
            if kind_found is not None and not _holds(kind_found, kind):
                raise PrunekitError(f"step {number} ({step.name}) needs {_KINDS[kind]} in column {column!r}, but "
                                    f"{source} has {kind_found} values there: fix the column or rename it")
        step.check_rows(info.rows)
        available.update(dict.fromkeys(step.provides()))


_KINDS = {"vector": "lists of numbers (embeddings)", "number": "numbers", "any": "values"}


def _holds(found: pa.DataType, kind: str) -> bool:
    if kind == "vector":
        return is_vector_type(found)
    if kind == "number":
        return is_number_type(found)
    return True


def _read_info(source: str | Path, work: Path, fingerprint: str, text_column: str, id_column: str | None,
               steps: list[Step], batch_size: int) -> CorpusInfo:
    """What the input holds: from a finished read stage of an earlier run (its input unchanged), else one full pass
    over the input."""
    vectors = EMBEDDING if EMBEDDING in input_columns(steps) else None
    stage = work / "00-read"
    if _complete(stage, fingerprint) and "id_note" in _marker(stage):
        marker = _marker(stage)
        dataset = ds.dataset(stage / "kept", format="parquet")
        if vectors in dataset.schema.names and is_vector_type(dataset.schema.field(vectors).type):
            length = None
            for batch in dataset.to_batches(columns=[ID, vectors], batch_size=batch_size):
                length = check_vectors(batch, vectors, length, str(source))
        return CorpusInfo(marker["kept"], dataset.schema, marker["id_column"], marker["id_note"])
    return inspect_corpus(source, text_column, id_column, vectors, batch_size)


def _run_steps(source: str | Path, steps: list[Step], work: Path, runner: _LocalRunner | _RayRunner,
               info: CorpusInfo, fingerprint: str, text_column: str, batch_size: int, executor: str,
               say: Callable[[str], None]) -> tuple[Path, int, list[dict]]:
    """Every stage not finished earlier; returns the last stage, the input row count and per-step records."""
    stage = work / "00-read"
    if not _complete(stage, fingerprint):
        say(f"read {source}")

        def read(dest: Path) -> None:
            batches = read_corpus(source, text_column, info.id_column, batch_size, info.schema)
            _write_split(batches, dest, keep_drops=False)

        _run_stage(stage, fingerprint, read, {"step": "read", "source": str(source)},
                   {"id_column": info.id_column, "id_note": info.id_note})
    rows = _marker(stage)["kept"]
    records = [{"step": "read", "rows": rows, "seconds": _marker(stage)["seconds"]}]
    for number, step in enumerate(steps, 1):
        previous = stage
        fingerprint = hashlib.sha256(f"{fingerprint}/{step.fingerprint()}".encode()).hexdigest()[:16]
        stage = work / f"{number:02d}-{step.name}"
        skipped = _complete(stage, fingerprint)
        if skipped:
            say(f"{step.name}: done earlier, skipped ({stage / 'COMPLETE'})")
        elif _marker(previous)["kept"] == 0:
            say(f"{step.name}: no rows left, skipped")
            _run_stage(stage, fingerprint, lambda dest, p=previous: shutil.copytree(p / "kept", dest / "kept",
                                                                                    dirs_exist_ok=True),
                       step.settings())
        else:
            say(f"{step.name}: {_marker(previous)['kept']} rows ({executor})")
            _run_stage(stage, fingerprint, lambda dest, s=step, p=previous: runner.run(s, p / "kept", dest),
                       step.settings())
        marker = _marker(stage)
        records.append({"step": step.name, "stage": stage.name, "rows": marker["rows"], "kept": marker["kept"],
                        "dropped": marker["dropped"], "seconds": marker["seconds"], "skipped": skipped,
                        "settings": step.settings()})
    return stage, rows, records


# --- stages on disk ---------------------------------------------------------------------------------------------


def _source_fingerprint(source: Path | str, text_column: str, id_column: str | None) -> str:
    if isinstance(source, Path):
        files = sorted(source.rglob("*")) if source.is_dir() else [source]
        stamp = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    else:
        stamp = [source]
    return hashlib.sha256(json.dumps([READ_VERSION, stamp, text_column, id_column]).encode()).hexdigest()[:16]


def _marker(stage: Path) -> dict:
    return json.loads((stage / "COMPLETE").read_text())


def _complete(stage: Path, fingerprint: str) -> bool:
    try:
        return _marker(stage)["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _finished_steps(work: Path) -> list[Path]:
    """Finished stages after the read stage (worth keeping for a rerun)."""
    return [p for p in work.glob("[0-9][0-9]-*") if p.name != "00-read" and (p / "COMPLETE").exists()]


def _remove_stale_partials(work: Path) -> None:
    """Remove the partial stage folders of runs that were killed (a live run's are left alone)."""
    for name in sorted({m["name"] for e in work.iterdir() if (m := _PARTIAL.match(e.name))}):
        legacy = work / f".{name}.partial"  # an older prunekit's name, without a process id
        if legacy.is_dir() and not legacy.is_symlink():
            shutil.rmtree(legacy, ignore_errors=True)
        remove_stale_temporaries(work / name)


def _run_stage(stage: Path, fingerprint: str, work: Callable[[Path], None], settings: dict,
               extra: dict | None = None) -> None:
    """Run `work` into a fresh partial folder, move it into place, then mark it COMPLETE (last, so a folder with the
    marker is always whole)."""
    started = time.perf_counter()
    partial = stage.with_name(f".{stage.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    partial.mkdir(parents=True)
    try:
        (partial / INCOMPLETE).write_text("prunekit is still writing this step; it is not finished\n")
        work(partial)
        kept, dropped = _count(partial / "kept"), _count_by_reason(partial / "excluded")
        marker = {"fingerprint": fingerprint, "settings": settings, "rows": kept + sum(dropped.values()),
                  "kept": kept, "dropped": dropped, "seconds": round(time.perf_counter() - started, 3),
                  **(extra or {})}
        (partial / INCOMPLETE).unlink()
        _discard(stage)
        os.replace(partial, stage)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    written = stage / ".COMPLETE.tmp"
    written.write_text(json.dumps(marker, indent=2, default=str) + "\n")
    os.replace(written, stage / "COMPLETE")


def _discard(stage: Path) -> None:
    """Remove an earlier version of `stage`: moved aside first, so a kill mid-delete leaves no half-deleted folder
    under the stage's name (still holding its COMPLETE marker)."""
    if not stage.exists():
        return
    old = stage.with_name(f".{stage.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.replace(stage, old)
    shutil.rmtree(old, ignore_errors=True)


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def _count(folder: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in _parts(folder))


def _count_by_reason(folder: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for part in _parts(folder):
        for reason in pq.read_table(part, columns=["reason"]).column("reason").to_pylist():
            counts[reason] = counts.get(reason, 0) + 1
    return counts


def _write_split(batches: Iterable[pa.RecordBatch], dest: Path, keep_drops: bool = True,
                 step: str = "", part: str = "part-0") -> None:
    """Rows without a drop reason to `dest/kept`, the others (id and reason) to `dest/excluded`."""
    writers: dict[str, pq.ParquetWriter] = {}
    (dest / "kept").mkdir(parents=True, exist_ok=True)
    try:
        for batch in batches:
            for kind, rows in _split(batch, step, keep_drops).items():
                if kind not in writers:
                    (dest / kind).mkdir(parents=True, exist_ok=True)
                    writers[kind] = pq.ParquetWriter(dest / kind / f"{part}.parquet", rows.schema)
                writers[kind].write_batch(rows)
    finally:
        for writer in writers.values():
            writer.close()


def _split(batch: pa.RecordBatch, step: str, keep_drops: bool = True) -> dict[str, pa.RecordBatch]:
    if not keep_drops or DROP_REASON not in batch.schema.names:
        return {"kept": batch} if len(batch) else {}
    dropped = pc.is_valid(batch.column(DROP_REASON))
    kept_rows = batch.filter(pc.invert(dropped)).drop_columns(list(DROP_COLUMNS))
    gone = batch.filter(dropped)
    excluded = pa.RecordBatch.from_arrays(
        [gone.column(ID), pa.array([step] * len(gone), pa.string()), gone.column(DROP_REASON),
         gone.column(DROP_SCORE), gone.column(DROP_DETAIL)], names=list(EXCLUSION_SCHEMA_NAMES))
    return {k: v for k, v in (("kept", kept_rows), ("excluded", excluded)) if len(v)}


def _write_exclusions(stages: list[Path], path: Path) -> dict[str, int]:
    tables = [pq.read_table(p) for stage in stages for p in _parts(stage / "excluded")]
    if tables:
        table = pa.concat_tables(tables, promote_options="permissive")
    else:
        table = pa.table({ID: pa.array([], pa.int64()), "step": pa.array([], pa.string()),
                          "reason": pa.array([], pa.string()), "score": pa.array([], pa.float64()),
                          "detail": pa.array([], pa.string())})
    pq.write_table(table, path)
    counts: dict[str, int] = {}
    for reason in table.column("reason").to_pylist():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


# --- executors ---------------------------------------------------------------------------------------------------


class _LocalRunner:
    """Streams batches through row-wise steps; grouping steps read their input once and get one group at a time."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def close(self) -> None:
        pass

    def run(self, step: Step, source: Path, dest: Path) -> None:
        dataset = ds.dataset(source, format="parquet")
        total = dataset.count_rows()
        if step.fit_columns:
            step.fit(dataset.to_batches(columns=list(step.fit_columns), batch_size=self.batch_size))
        with progress_bar() as bar:
            task = bar.add_task(step.name, total=total)
            _write_split(self._counted(self._outputs(step, dataset), bar, task), dest, step=step.name)

    def _outputs(self, step: Step, dataset: ds.Dataset) -> Iterator[pa.RecordBatch]:
        if step.partition is None:
            yield from step.run(dataset.to_batches(batch_size=self.batch_size))
            return
        for group in groups(dataset.to_table(), step.partition):
            yield from step.run(group.to_batches())

    @staticmethod
    def _counted(batches: Iterator[pa.RecordBatch], bar: object, task: object) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            bar.advance(task, len(batch))
            yield batch


class _RayRunner:
    """The same steps on Ray Data: row-wise steps as `map_batches`, grouping steps as `groupby().map_groups()`;
    `fit` runs on the driver over the needed columns only."""

    def __init__(self, address: str | None, batch_size: int) -> None:
        self.batch_size = batch_size
        try:
            import ray
        except ImportError:
            raise PrunekitError("the Ray executor needs Ray: pip install 'prunekit[ray]'") from None
        self.started = not ray.is_initialized()
        if self.started:
            if address:
                _check_reachable(address)
            ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                     **({} if address else {"num_cpus": os.cpu_count()}))
        self.ray = ray

    def close(self) -> None:
        if self.started:  # a cluster we started ends with the run; one we joined stays
            self.ray.shutdown()

    def run(self, step: Step, source: Path, dest: Path) -> None:
        dataset = self.ray.data.read_parquet(str(source))
        if step.fit_columns:
            step.fit(batch for table in dataset.select_columns(list(step.fit_columns)).iter_batches(
                batch_size=self.batch_size, batch_format="pyarrow") for batch in table.to_batches())
        def apply(table: pa.Table) -> pa.Table:
            batches = list(step.run(table.to_batches()))
            return pa.Table.from_batches(batches) if batches else table.slice(0, 0)

        if step.partition is None:
            result = dataset.map_batches(apply, batch_format="pyarrow", batch_size=self.batch_size)
        else:
            # Ray's default of 200 shuffle partitions costs minutes of scheduling on a small machine.
            partitions = 2 * max(1, int(self.ray.cluster_resources().get("CPU", 1)))
            result = dataset.groupby(step.partition, num_partitions=partitions).map_groups(
                apply, batch_format="pyarrow")
        # Pull the results to the driver in blocks and write them as the local runner does: identical layout.
        _write_split((b for t in result.iter_batches(batch_size=self.batch_size, batch_format="pyarrow")
                      for b in t.to_batches()), dest, step=step.name)


def _check_reachable(address: str) -> None:
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError):
        raise PrunekitError(f"Ray address {address!r} is unreachable: start a cluster there (ray start --head) or "
                            "leave --ray-address out to start a local one") from None
