"""How the embedding-free corpus steps scale with rows: cluster + semantic dedup + dedup filter on synthetic embeddings.

    .venv/bin/python bench/data_scale.py [--sizes 100000,300000,1000000] [--epsilon 0.05] [--quotas 0.5]
        [--ray-check 100000] [--work /tmp/prunekit-data-scale] [--json PATH]

Data: --centres random unit centres in --dim dimensions; each row is a centre plus Gaussian noise of norm about
--noise (cosine ~0.5 between rows of one centre at 1.0), normalised; --dup-rate of the rows are near-copies of
another row (noise norm --dup-noise, cosine ~0.995), so dedup at epsilon 0.05 should drop about that share. Written
once per size as Parquet (text: a short string, embedding: fixed-size list of float32), generated in chunks with
a seed per chunk, so a larger size starts with the rows of a smaller one.

Timing: `run_pipeline` with `dedup_steps(epsilon)` (plus `ComplexityQuotaStep(keep)` with --quotas) on the local
executor, from a fresh work folder per size; seconds per step from summary.json. The growth columns compare each
size with the previous one: time ratio against size ratio, and the exponent log(time ratio) / log(size ratio)
(1 = linear; with about sqrt(rows) clusters, semdedup's within-cluster similarities grow as rows^1.5).
--ray-check N runs the same steps on the Ray executor at N rows and checks that the kept ids equal the local run's.
Writes bench/results/data_scale.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prunekit.corpus.pipeline import run_pipeline
from prunekit.corpus.quotas import ComplexityQuotaStep
from prunekit.corpus.recipe import dedup_steps
from prunekit.corpus.step import Step, embedding_array

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 100_000


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def generate(path: Path, size: int, args: argparse.Namespace) -> dict:
    """Write the synthetic corpus of `size` rows to `path` unless an identical one is there; returns its settings."""
    settings = {"rows": size, "dim": args.dim, "centres": args.centres, "noise": args.noise,
                "dup_rate": args.dup_rate, "dup_noise": args.dup_noise, "seed": args.seed, "chunk": CHUNK}
    stamp = path.with_suffix(".json")
    if path.exists() and stamp.exists() and json.loads(stamp.read_text()) == settings:
        return settings
    path.parent.mkdir(parents=True, exist_ok=True)
    centres = unit(np.random.default_rng(args.seed).normal(size=(args.centres, args.dim)))
    schema = pa.schema([("text", pa.string()), ("embedding", pa.list_(pa.float32(), args.dim))])
    scale = 1 / math.sqrt(args.dim)  # per-coordinate sigma for noise of norm ~1
    with pq.ParquetWriter(path, schema) as writer:
        for offset in range(0, size, CHUNK):
            rows = min(CHUNK, size - offset)
            rng = np.random.default_rng([args.seed, offset // CHUNK])  # per chunk: sizes share their prefix
            labels = rng.integers(args.centres, size=rows)
            vectors = unit(centres[labels] + rng.normal(scale=args.noise * scale, size=(rows, args.dim)))
            planted = round(args.dup_rate * rows)
            order = rng.permutation(rows)
            copies, sources = order[:planted], order[planted : 2 * planted]
            vectors[copies] = unit(vectors[sources] + rng.normal(scale=args.dup_noise * scale,
                                                                  size=(planted, args.dim)))
            labels[copies] = labels[sources]
            texts = pa.array([f"synthetic row {offset + i} on topic {c}" for i, c in enumerate(labels.tolist())])
            writer.write_table(pa.table({"text": texts, "embedding": embedding_array(vectors)}, schema=schema))
    stamp.write_text(json.dumps(settings) + "\n")
    return settings


def planted(size: int, dup_rate: float) -> int:
    return sum(round(dup_rate * min(CHUNK, size - offset)) for offset in range(0, size, CHUNK))


def steps_for(args: argparse.Namespace) -> list[Step]:
    steps = dedup_steps(args.epsilon, clusters=args.clusters, seed=args.seed)
    return [*steps, ComplexityQuotaStep(keep=args.quotas)] if args.quotas else steps


def timed_run(source: Path, name: str, args: argparse.Namespace, executor: str = "local") -> tuple[dict, set]:
    """One pipeline run from scratch: (record with seconds per step, kept ids)."""
    out = args.work / f"out-{name}"
    work = args.work / f"work-{name}"
    shutil.rmtree(work, ignore_errors=True)  # a finished stage would be skipped and its time not measured
    started = time.perf_counter()
    result = run_pipeline(source, steps_for(args), out, executor=executor, work_dir=work, overwrite=True,
                          say=lambda message: None)
    wall = time.perf_counter() - started  # with Ray this includes starting the local cluster
    summary = json.loads((out / "summary.json").read_text())
    kept = set(pq.read_table(out / "kept.parquet", columns=["id"]).column("id").to_pylist())
    record = {"rows": result.rows, "kept": result.kept, "dropped": result.dropped, "executor": executor,
              "steps": {s["step"]: s["seconds"] for s in summary["steps"]}, "seconds": summary["seconds"],
              "wall_seconds": round(wall, 3), "rows_per_second": summary["rows_per_second"]}
    shutil.rmtree(work, ignore_errors=True)  # the stage copies of a large size take GBs
    return record, kept


def print_table(records: list[dict]) -> None:
    names = list(records[0]["steps"])
    print(f"\n{'rows':>9} " + " ".join(f"{n:>12}" for n in names) +
          f" {'total s':>9} {'rows/s':>9} {'dropped':>9} {'time x':>7} {'rows x':>7} {'exponent':>8}")
    for i, r in enumerate(records):
        growth = ""
        if i:
            time_ratio = r["seconds"] / records[i - 1]["seconds"]
            size_ratio = r["rows"] / records[i - 1]["rows"]
            r["growth"] = {"time_ratio": time_ratio, "size_ratio": size_ratio,
                           "exponent": math.log(time_ratio) / math.log(size_ratio)}
            growth = f" {time_ratio:>7.2f} {size_ratio:>7.2f} {r['growth']['exponent']:>8.2f}"
        print(f"{r['rows']:>9,} " + " ".join(f"{r['steps'].get(n, 0):>12.2f}" for n in names) +
              f" {r['seconds']:>9.2f} {r['rows_per_second']:>9,.0f} {sum(r['dropped'].values()):>9,}{growth}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--epsilon", type=float, default=0.05)
    parser.add_argument("--clusters", type=int, default=None, help="k-means clusters (default: about sqrt(rows))")
    parser.add_argument("--quotas", type=float, default=0.0, help="also run ComplexityQuotaStep(keep) (0: skip)")
    parser.add_argument("--ray-check", type=int, default=100_000, help="rows for the Ray comparison (0: skip)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--centres", type=int, default=3000)
    parser.add_argument("--noise", type=float, default=1.0, help="norm of the noise around a centre")
    parser.add_argument("--dup-rate", type=float, default=0.05)
    parser.add_argument("--dup-noise", type=float, default=0.1, help="norm of a near-copy's noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/prunekit-data-scale"))
    parser.add_argument("--json", type=Path, default=RESULTS / "data_scale.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]

    records, kept_by_size, data = [], {}, {}
    for size in sizes:
        source = args.work / f"data-{size}.parquet"
        started = time.perf_counter()
        data[size] = {**generate(source, size, args), "planted": planted(size, args.dup_rate),
                      "seconds": round(time.perf_counter() - started, 1)}
        record, kept_by_size[size] = timed_run(source, f"{size}-local", args)
        records.append(record)
        print(f"{size:,} rows ({data[size]['planted']:,} planted near-copies): {record['seconds']:.1f} s, dropped "
              f"{record['dropped']}, {record['steps']}", flush=True)
    print_table(records)

    ray = None
    if args.ray_check:
        size = args.ray_check
        source = args.work / f"data-{size}.parquet"
        generate(source, size, args)
        local, local_kept = (records[sizes.index(size)], kept_by_size[size]) if size in sizes else \
            timed_run(source, f"{size}-local", args)
        remote, remote_kept = timed_run(source, f"{size}-ray", args, executor="ray")  # starts and stops a cluster
        ray = {"rows": size, "identical_kept_ids": local_kept == remote_kept,
               "only_local": len(local_kept - remote_kept), "only_ray": len(remote_kept - local_kept),
               "local": local, "ray": remote}
        print(f"\nray check at {size:,} rows: kept ids identical: {ray['identical_kept_ids']} "
              f"(only local {ray['only_local']}, only ray {ray['only_ray']}); local {local['seconds']:.1f} s, "
              f"ray {remote['seconds']:.1f} s ({remote['wall_seconds']:.1f} s with cluster start) {remote['steps']}")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v for k, v in
                                                  vars(args).items()},
                                     "data": data, "local": records, "ray_check": ray}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
