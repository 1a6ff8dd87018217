"""SIGKILL at several moments of prune, recover, sweep and `data dedup`: the output is then either absent or
complete (equal to an uninterrupted run's), and rerunning the same command succeeds with the same output, leaving no
hidden `.OUT.partial-*` / `.OUT.old-*` sibling, no OUT.partial / OUT.work it should have removed, and no INCOMPLETE
marker.

Each command runs as a real process (`python -m prunekit`) in its own process group; the test polls (every 10 ms,
with a timeout) for the moment to kill at: a temporary output appearing, a work folder or checkpoint appearing, or
a random delay drawn from a seeded generator. Counts are printed at the end and written as JSON to
PRUNEKIT_KILL_REPORT when set. PRUNEKIT_KILL_SEED changes the random delays. Select with `-m kill`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_text, tiny_model

pytestmark = pytest.mark.kill

SEED = int(os.environ.get("PRUNEKIT_KILL_SEED", "0"))
RUN_TIMEOUT_S = 180.0  # one uninterrupted run of a tiny model; far more than it takes
POLL_S = 0.01
STATS: Counter[str] = Counter()
FINDINGS: list[dict[str, Any]] = []
EVENTS: list[dict[str, Any]] = []  # one per killed run: when, and what it left
UNSTABLE = {"seconds", "peak_rss_bytes", "versions", "prunekit_version", "created", "timestamp", "elapsed"}


@dataclass
class Kit:
    root: Path  # inputs, read by every run
    env: dict[str, str]


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Kit:
    root = tmp_path_factory.mktemp("kill-inputs")
    tiny_model("llama").save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "text.txt").write_text(make_text(6000, seed=1))
    rng = np.random.default_rng(0)
    base = rng.normal(size=(20, 8))
    rows = [{"id": f"doc-{i}", "text": make_text(15, seed=i),
             "embedding": [float(v) for v in base[i // 2] + (1e-4 * rng.normal(size=8) if i % 2 else 0)]}
            for i in range(40)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "PRUNEKIT_CACHE": str(tmp_path_factory.getbasetemp() / "kill-cache"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    return Kit(root, env)


def command(name: str, kit: Kit, out: Path) -> list[str]:
    r = kit.root
    small = ["--calib", str(r / "text.txt"), "--calib-samples", "8", "--calib-seq-len", "32", "--eval-text",
             str(r / "text.txt"), "--ppl-samples", "2", "--ppl-seq-len", "32"]
    return {
        "prune": ["prune", str(r / "model"), "--out", str(out), "--method", "wanda", "--sparsity", "0.5", *small],
        "recover": ["recover", str(r / "model"), "--out", str(out), "--steps", "30", "--checkpoint-every", "2",
                    "--batch-size", "2", "--seq-len", "32", "--lora-rank", "2", "--text", str(r / "text.txt"),
                    "--ppl-samples", "2", "--ppl-seq-len", "32"],
        "sweep": ["sweep", str(r / "model"), "--out", str(out), "--methods", "magnitude,wanda", "--sparsity", "0.5",
                  "--device", "cpu", *small],
        "data dedup": ["data", "dedup", str(r / "corpus.jsonl"), "--out", str(out), "--embedding-column",
                       "embedding", "--clusters", "3", "--epsilon", "0.05"],
    }[name]


# ---- moments to kill at: predicates over the output's folder -------------------------------------------------

def _hidden_temporaries(out: Path) -> list[Path]:
    pattern = re.compile(rf"^\.{re.escape(out.name)}\..*(partial|old)")
    return [p for p in out.parent.iterdir() if pattern.match(p.name)] if out.parent.is_dir() else []


def temporary_appears(out: Path) -> bool:
    return bool(_hidden_temporaries(out))


def work_appears(out: Path) -> bool:
    return out.with_name(f"{out.name}.work").exists() or out.with_name(f"{out.name}.partial").exists()


def checkpoint_appears(out: Path) -> bool:
    return (out.with_name(f"{out.name}.work") / "checkpoint").exists()


def point_done(out: Path) -> bool:
    return any(out.with_name(f"{out.name}.partial").glob("points/*/prunekit.json"))


def step_done(out: Path) -> bool:
    return any(out.with_name(f"{out.name}.work").glob("*/COMPLETE"))


MOMENTS: dict[str, list[str]] = {
    "prune": ["temporary", "random"],
    "recover": ["checkpoint", "temporary"],
    "sweep": ["point", "random"],
    "data dedup": ["step", "temporary"],
}
PREDICATES: dict[str, Callable[[Path], bool]] = {"temporary": temporary_appears, "work": work_appears,
                                                 "checkpoint": checkpoint_appears, "point": point_done,
                                                 "step": step_done}


# ---- running -----------------------------------------------------------------------------------------------------

@dataclass
class Run:
    code: int | None  # None: killed
    seconds: float
    stderr: str


def start(argv: list[str], kit: Kit, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "prunekit", *argv], cwd=cwd, env=kit.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the group this test started (the run and any child of it)


def run_to_end(argv: list[str], kit: Kit, cwd: Path) -> Run:
    started = time.perf_counter()
    process = start(argv, kit, cwd)
    try:
        _, err = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill(process)
        _, err = process.communicate()
        return Run(-9, time.perf_counter() - started, err + "\n(timed out)")
    return Run(process.returncode, time.perf_counter() - started, err)


def run_and_kill(argv: list[str], kit: Kit, cwd: Path, out: Path, moment: str, delay: float) -> Run:
    """Start, wait for `moment` (a predicate over the output's folder, or `random`: `delay` seconds), SIGKILL."""
    started = time.perf_counter()
    process = start(argv, kit, cwd)
    predicate = PREDICATES.get(moment)
    deadline = started + (delay if predicate is None else RUN_TIMEOUT_S)
    while process.poll() is None and time.perf_counter() < deadline:
        if predicate is not None and predicate(out):
            break
        time.sleep(POLL_S)
    killed = process.poll() is None
    if killed:
        _kill(process)
    _, err = process.communicate()
    return Run(None if killed else process.returncode, time.perf_counter() - started, err)


# ---- comparing outputs -------------------------------------------------------------------------------------------

def _stable(value: Any) -> Any:
    """A report without what differs between identical runs (timings, memory, versions)."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in UNSTABLE and "second" not in k}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _json(path: Path, out: Path) -> Any:
    return _stable(json.loads(path.read_text().replace(str(out), "<OUT>")))


def _tensors(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def differences(name: str, out: Path, reference: Path) -> list[str]:
    """How `out` differs from the uninterrupted run's `reference` (empty: the same output)."""
    import pyarrow.parquet as pq
    import torch

    problems = []
    if any(out.rglob("INCOMPLETE")):
        problems.append("holds an INCOMPLETE marker")
    if name in ("prune", "recover"):
        if _json(out / "prunekit.json", out) != _json(reference / "prunekit.json", reference):
            problems.append("prunekit.json differs")
        got, want = _tensors(out), _tensors(reference)
        if set(got) != set(want):
            problems.append("other tensors")
        exact = name == "prune"
        for key in set(got) & set(want):
            same = torch.equal(got[key], want[key]) if exact else torch.allclose(got[key], want[key], rtol=1e-5,
                                                                                  atol=1e-7)
            if not same:
                problems.append(f"tensor {key} differs")
                break
    elif name == "sweep":
        if _json(out / "sweep.json", out) != _json(reference / "sweep.json", reference):
            problems.append("sweep.json differs")
    else:
        for file in ("kept.parquet", "excluded.parquet"):
            got, want = pq.read_table(out / file).to_pylist(), pq.read_table(reference / file).to_pylist()
            if got != want:
                problems.append(f"{file} differs")
    return problems


def leftovers(name: str, out: Path) -> list[str]:
    """What a finished run must not leave beside its output."""
    left = [p.name for p in _hidden_temporaries(out)]
    if name == "recover" and out.with_name(f"{out.name}.work").exists():
        left.append(f"{out.name}.work")
    if name == "sweep" and out.with_name(f"{out.name}.partial").exists():
        left.append(f"{out.name}.partial")
    if out.exists() and any(out.rglob("INCOMPLETE")):
        left.append(f"{out.name}/INCOMPLETE")
    return left


def finding(name: str, moment: str, problem: str, run: Run | None = None) -> None:
    STATS["findings"] += 1
    tail = "\n".join((run.stderr if run else "").strip().splitlines()[-4:])
    FINDINGS.append({"command": name, "moment": moment, "problem": problem, "stderr": tail})


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.perf_counter()
    yield
    summary = {"seed": SEED, "seconds": round(time.perf_counter() - started, 1), **STATS, "findings": FINDINGS,
               "events": EVENTS}
    if os.environ.get("PRUNEKIT_KILL_REPORT"):
        Path(os.environ["PRUNEKIT_KILL_REPORT"]).write_text(json.dumps(summary, indent=2) + "\n")
    keys = ("runs", "killed", "finished_before_kill", "leftovers_after_kill", "outputs_absent",
            "outputs_complete_equal", "outputs_broken", "reruns_ok", "reruns_failed", "leftovers_after_rerun",
            "findings")
    line = "kill summary: " + ", ".join(f"{k}={STATS.get(k, 0)}" for k in keys) + f", seconds={summary['seconds']}"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\n{line}", flush=True)


@pytest.mark.parametrize("name", list(MOMENTS))
def test_kill_then_rerun(kit: Kit, tmp_path: Path, name: str) -> None:
    rng = random.Random(f"{SEED}-{name}")
    clean = tmp_path / "clean"
    clean.mkdir()
    reference = clean / "out"
    baseline = run_to_end(command(name, kit, reference), kit, clean)
    STATS["runs"] += 1
    assert baseline.code == 0, f"the uninterrupted run failed:\n{baseline.stderr[-3000:]}"
    assert not leftovers(name, reference), leftovers(name, reference)
    mine: list[str] = []
    for number, moment in enumerate(MOMENTS[name]):
        folder = tmp_path / f"kill-{number}-{moment}"
        folder.mkdir()
        out = folder / "out"
        argv = command(name, kit, out)
        delay = rng.uniform(0.2, 1.0) * baseline.seconds
        killed = run_and_kill(argv, kit, folder, out, moment, delay)
        STATS["runs"] += 1
        where = f"{name} killed at {moment}" + (f" ({delay:.2f} s)" if moment == "random" else "")
        if killed.code is None:
            STATS["killed"] += 1
        else:
            STATS["finished_before_kill"] += 1
            if killed.code != 0:
                mine.append(f"{where}: exited {killed.code} before the kill")
                finding(name, moment, f"exited {killed.code}", killed)
        left_by_kill = [p.name for p in _hidden_temporaries(out)] + [
            p.name for p in (out.with_name(f"{out.name}.work"), out.with_name(f"{out.name}.partial")) if p.exists()]
        STATS["leftovers_after_kill"] += bool(left_by_kill)
        EVENTS.append({"command": name, "moment": moment, "killed": killed.code is None,
                       "after_s": round(killed.seconds, 2), "output_exists": out.exists(), "left": left_by_kill})
        if not out.exists():
            STATS["outputs_absent"] += 1
        else:
            broken = differences(name, out, reference) if (out / _main_file(name)).exists() else ["incomplete"]
            if broken:
                STATS["outputs_broken"] += 1
                mine.append(f"{where}: the output exists but {', '.join(broken)}")
                finding(name, moment, f"output after kill: {', '.join(broken)}", killed)
            else:
                STATS["outputs_complete_equal"] += 1
        rerun_argv = argv + (["--overwrite"] if out.exists() else [])
        rerun = run_to_end(rerun_argv, kit, folder)
        STATS["runs"] += 1
        if rerun.code != 0:
            STATS["reruns_failed"] += 1
            mine.append(f"{where}: the rerun exited {rerun.code}: {rerun.stderr.strip()[-600:]}")
            finding(name, moment, f"rerun exited {rerun.code}", rerun)
            continue
        STATS["reruns_ok"] += 1
        left = leftovers(name, out)
        if left:
            STATS["leftovers_after_rerun"] += 1
            mine.append(f"{where}: the rerun left {', '.join(left)}")
            finding(name, moment, f"rerun left {', '.join(left)}", rerun)
        broken = differences(name, out, reference)
        if broken:
            mine.append(f"{where}: the rerun's output: {', '.join(broken)}")
            finding(name, moment, f"rerun output: {', '.join(broken)}", rerun)
        shutil.rmtree(folder, ignore_errors=True)
    assert not mine, "\n".join(mine)


def _main_file(name: str) -> str:
    return {"prune": "prunekit.json", "recover": "prunekit.json", "sweep": "sweep.json",
            "data dedup": "summary.json"}[name]
