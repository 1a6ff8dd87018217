"""Running steps over a corpus: local (default, streaming) or on Ray Data, resumable, with an exclusion log.

Layout of the work folder (default: `OUT.work` beside the output):

    00-read/kept/part-*.parquet         the input with ids, validated
    01-embed/kept/...                   each step's surviving rows
    02-select/excluded/...              rows a step dropped: id, reason, score, detail
    NN-name/COMPLETE                    written last: the step's fingerprint (its settings and all before it), counts

A rerun skips every step whose COMPLETE marker matches; a step interrupted halfway left only a `.partial` folder,
which is discarded. The output folder appears only when everything finished (written aside, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from prunekit.corpus.io import read_corpus, write_rows
from prunekit.corpus.step import DROP_COLUMNS, DROP_DETAIL, DROP_REASON, DROP_SCORE, EMBEDDING, ID, Step, groups
from prunekit.errors import PrunekitError
from prunekit.outputs import atomic_directory, check_output
from prunekit.progress import progress_bar

EXECUTORS = ("local", "ray")
EXCLUSION_SCHEMA_NAMES = (ID, "step", "reason", "score", "detail")


@dataclass
class PipelineResult:
    out: Path
    rows: int
    kept: int
    dropped: dict[str, int]
    seconds: float
    steps: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {"rows": self.rows, "kept": self.kept, "dropped": self.dropped, "seconds": round(self.seconds, 3),
                "rows_per_second": round(self.rows / self.seconds, 1) if self.seconds else None,
                "steps": self.steps}


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
    check_output(out, overwrite, inputs=(source_path,) if source_path.exists() else ())
    work = (work_dir or out.with_name(f"{out.name}.work")).expanduser()
    runner: _LocalRunner | _RayRunner = _RayRunner(ray_address, batch_size) if executor == "ray" else _LocalRunner(
        batch_size)
    started = time.perf_counter()
    try:
        stage, rows, records = _run_steps(source, steps, work, runner, text_column, id_column, batch_size, executor,
                                          say)
    finally:
        runner.close()
    with atomic_directory(out, overwrite=overwrite) as tmp:
        kept = write_rows(stage / "kept", tmp, output_format, drop=() if keep_embeddings else (EMBEDDING,))
        dropped = _write_exclusions([work / r["stage"] for r in records[1:]], tmp / "excluded.parquet")
        result = PipelineResult(out, rows, kept, dropped, time.perf_counter() - started, records)
        (tmp / "summary.json").write_text(json.dumps(result.summary(), indent=2, default=str) + "\n")
    return result


def _run_steps(source: str | Path, steps: list[Step], work: Path, runner: _LocalRunner | _RayRunner,
               text_column: str, id_column: str | None, batch_size: int, executor: str,
               say: Callable[[str], None]) -> tuple[Path, int, list[dict]]:
    """Every stage not finished earlier; returns the last stage, the input row count and per-step records."""
    source_path = Path(str(source)).expanduser()
    fingerprint = _source_fingerprint(source_path if source_path.exists() else str(source), text_column, id_column)
    stage = work / "00-read"
    if not _complete(stage, fingerprint):
        say(f"read {source}")

        def read(dest: Path) -> None:
            _write_split(read_corpus(source, text_column, id_column, batch_size), dest, keep_drops=False)

        _run_stage(stage, fingerprint, read, {"step": "read", "source": str(source)})
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
    return hashlib.sha256(json.dumps([stamp, text_column, id_column]).encode()).hexdigest()[:16]


def _marker(stage: Path) -> dict:
    return json.loads((stage / "COMPLETE").read_text())


def _complete(stage: Path, fingerprint: str) -> bool:
    try:
        return _marker(stage)["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError):
        return False


def _run_stage(stage: Path, fingerprint: str, work: Callable[[Path], None], settings: dict) -> None:
    """Run `work` into a fresh `.partial` folder; count its rows, write COMPLETE, then move it into place."""
    started = time.perf_counter()
    partial = stage.with_name(f".{stage.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    work(partial)
    kept, dropped = _count(partial / "kept"), _count_by_reason(partial / "excluded")
    marker = {"fingerprint": fingerprint, "settings": settings, "rows": kept + sum(dropped.values()), "kept": kept,
              "dropped": dropped, "seconds": round(time.perf_counter() - started, 3)}
    (partial / "COMPLETE").write_text(json.dumps(marker, indent=2, default=str) + "\n")
    shutil.rmtree(stage, ignore_errors=True)
    os.replace(partial, stage)


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
