"""Property-based fuzzing of everything a user hands to `prunekit`: prune recipes, corpus recipes, the options of
every command, and random bytes as every file it reads.

The property, for every case: the command exits 0, or exits 2 with one `error: ...` line as the last line of stderr
(click's own usage errors, also exit 2, are counted apart); no Python traceback; nothing is written when it exits 2
(no --out, no OUT.work, no OUT.partial, no hidden .OUT.partial-* sibling); no temporary is left when it exits 0; no
input is changed (sha256 of every file in the case's folder before and after).

Every case runs in-process through `prunekit.cli.main`, the real entry point (it maps PrunekitError to exit 2), in
a fresh folder holding copies of the inputs: a tiny random llama, a little text, a JSONL/Parquet corpus with an
`embedding` column, zero-shot tasks, a .npz dataset and the output of one real prune. Nothing downloads: offline
asset names, `wikipedia`, `hf:` and BIG-bench names are never generated, and the hub is offline.

Profiles (PRUNEKIT_FUZZ_PROFILE): `ci` (default: derandomized, a fixed small number of examples per strategy, about
two minutes on two cores) and `long` (many more random examples). Violations are collected, not raised, so one run
lists every distinct failure; PRUNEKIT_FUZZ_RAISE=1 raises at the first one instead, so hypothesis shrinks it.
Counts are printed at the end of the module and written as JSON to PRUNEKIT_FUZZ_REPORT when it is set.

Select or deselect with `-m fuzz` / `-m "not fuzz"`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sys
import time
import traceback
import typing
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import make_text, tiny_model
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.fuzz

# ---- profiles ----------------------------------------------------------------------------------------------------

PROFILE = os.environ.get("PRUNEKIT_FUZZ_PROFILE", "ci")
_COMMON: dict[str, Any] = dict(deadline=None, suppress_health_check=list(HealthCheck), print_blob=False)
settings.register_profile("ci", derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
                          **_COMMON)
settings.register_profile("long", phases=[Phase.explicit, Phase.generate, Phase.shrink], **_COMMON)
SCALE = {"ci": 2, "long": 30}.get(PROFILE, 2)
CASE_TIMEOUT_S = {"ci": 25, "long": 60}.get(PROFILE, 25)  # a case longer than this is recorded as a hang
RAISE = os.environ.get("PRUNEKIT_FUZZ_RAISE") == "1"


def examples(n: int) -> settings:
    """`n` examples (times the profile's scale) on top of the chosen profile."""
    return settings(settings.get_profile(PROFILE), max_examples=n * SCALE)


# ---- what may never be generated: names that download --------------------------------------------------------

def _download_names() -> set[str]:
    from prunekit.assets.registry import MODELS, TEXTS
    from prunekit.eval.harness import HARNESS_TASKS, TASK_GROUPS

    return {*(n.lower() for n in MODELS), *(n.lower() for n in TEXTS), "all-minilm-l6-v2", "cifar10-test", "",
            "goal_inference", "step_inference", "date_understanding", "physics", "causal_judgment", "tasks",
            *HARNESS_TASKS, *TASK_GROUPS}


DOWNLOADS = _download_names()


def offline_safe(value: str) -> bool:
    """Whether `value`, as any name or path prunekit takes, cannot trigger a download or escape the case folder."""
    low = value.strip().lower()
    return (low not in DOWNLOADS and not low.startswith(("hf:", "bigbench", "~", "/", "-")) and ".." not in low
            and "\x00" not in value and not any(low == n or low.startswith(n + ",") or low.endswith("," + n)
                                                 or f",{n}," in low for n in DOWNLOADS if n))


WORDS = st.text(alphabet="abcxyz019-_.:, é", min_size=1, max_size=8).filter(offline_safe)


# ---- statistics and findings ------------------------------------------------------------------------------------

STATS: Counter[str] = Counter()
PER_COMMAND: dict[str, Counter[str]] = {}
FINDINGS: dict[tuple[str, str, str], dict[str, Any]] = {}  # (command, problem, signature) -> first example
EXTRA_STDERR: list[str] = []  # stderr lines other than the error line on exit 2 (progress, warnings), a sample
MESSAGES: Counter[str] = Counter()  # (command, start of the error line) of every exit 2, to see what cases reach


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    exception: str | None = None  # a traceback that escaped main()
    seconds: float = 0.0
    timed_out: bool = False


class _CaseTimeout(BaseException):
    """Raised by SIGALRM inside a case that runs too long (BaseException: no `except Exception` swallows it)."""


def invoke(argv: list[str], cwd: Path, timeout: float = CASE_TIMEOUT_S) -> Outcome:
    """Run `prunekit ARGV` in-process the way the console script does (prunekit.cli:main), in `cwd`."""
    from prunekit.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd = sys.argv, os.getcwd()

    def alarm(signum: int, frame: object) -> None:
        raise _CaseTimeout

    previous = signal.signal(signal.SIGALRM, alarm)
    sys.argv = ["prunekit", *argv]
    os.chdir(cwd)
    started = time.perf_counter()
    outcome = Outcome(0, "", "")
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        outcome.code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except _CaseTimeout:
        outcome.code, outcome.timed_out = -1, True
    except BaseException:  # noqa: BLE001 - a traceback the user would see
        outcome.code, outcome.exception = 1, traceback.format_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        sys.argv = old_argv
        os.chdir(old_cwd)
    outcome.seconds = time.perf_counter() - started
    outcome.stdout, outcome.stderr = out.getvalue(), err.getvalue()
    return outcome


def digest(path: Path, exclude: tuple[Path, ...] = ()) -> str:
    """sha256 of a file, or of a directory's relative paths and file contents (symlinks by their target), leaving
    out what lies under `exclude` (the outputs the command was asked to write)."""
    h = hashlib.sha256()
    if any(path == e or path.is_relative_to(e) for e in exclude):
        return "excluded"
    if path.is_symlink():
        h.update(b"link:" + os.readlink(path).encode())
    elif path.is_file():
        h.update(path.read_bytes())
    elif path.is_dir():
        for p in sorted(path.rglob("*")):
            if any(p == e or p.is_relative_to(e) for e in exclude):
                continue
            h.update(str(p.relative_to(path)).encode() + b"\0")
            if p.is_symlink():
                h.update(b"link:" + os.readlink(p).encode())
            elif p.is_file():
                h.update(p.read_bytes())
    else:
        h.update(b"missing")
    return h.hexdigest()


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


TEMPORARY = re.compile(r"(^|/)\.[^/]+\.(partial|old)-[^/]*$|(^|/)[^/]+\.partial$|(^|/)INCOMPLETE$")


def _tail(text: str, lines: int = 4) -> str:
    return "\n".join(line for line in text.strip().splitlines()[-lines:])


def _signature(outcome: Outcome) -> str:
    """What distinguishes one failure from another: the exception line and the innermost prunekit frame."""
    text = outcome.exception or outcome.stderr
    if "Traceback" not in text:
        return _tail(text, 1)[:160]
    lines = text.strip().splitlines()
    frames = [line.strip() for line in lines if line.strip().startswith("File ") and "prunekit" in line]
    return f"{lines[-1][:160]} @ {frames[-1] if frames else '?'}"


def record(command: str, argv: list[str], problem: str, outcome: Outcome, detail: str = "",
           inputs: dict[str, str] | None = None) -> None:
    key = (command, problem, _signature(outcome) if problem in ("traceback", "bad exit") else detail[:200])
    STATS[f"finding:{problem}"] += 1
    if key not in FINDINGS:
        FINDINGS[key] = {"command": command, "problem": problem, "argv": argv, "exit": outcome.code,
                         "detail": detail, "tail": _tail(outcome.exception or outcome.stderr, 6),
                         "inputs": inputs or {}, "count": 0}
    FINDINGS[key]["count"] += 1


def check_case(command: str, argv: list[str], case: Path, inputs: dict[str, str] | None = None,
               keeps_work: bool = False) -> Outcome:
    """Run one case in `case` and check the property; returns the outcome. `inputs`: a note of what the case's
    generated files held (for the report)."""
    targets = tuple((case / v).absolute() for k, v in zip(argv, argv[1:], strict=False)
                    if k in ("--out", "-o") or (keeps_work and k == "--work-dir"))
    targets = tuple(Path(os.path.normpath(t)) for t in targets if Path(os.path.normpath(t)) != case)
    full = {p.name: digest(p) for p in case.iterdir()}
    partial = {p.name: digest(p, targets) for p in case.iterdir()}
    listed = listing(case)
    outcome = invoke(argv, case)
    written = targets if outcome.code == 0 else ()  # what it was asked to write may change, on success only
    before = partial if written else full
    after = {p.name: digest(p, written) for p in case.iterdir() if p.name in before}
    new = sorted(listing(case) - listed)
    counts = PER_COMMAND.setdefault(command, Counter())
    STATS["cases"] += 1
    counts["cases"] += 1
    problems: list[tuple[str, str]] = []
    combined = outcome.stdout + outcome.stderr + (outcome.exception or "")
    usage = outcome.code == 2 and "Usage: prunekit" in outcome.stderr
    if outcome.timed_out:
        STATS["timeouts"] += 1
        problems.append(("hang", f"still running after {CASE_TIMEOUT_S} s"))
    elif outcome.exception is not None or "Traceback (most recent call last)" in combined:
        STATS["tracebacks"] += 1
        problems.append(("traceback", ""))
    elif outcome.code not in (0, 2):
        problems.append(("bad exit", f"exit {outcome.code}"))
    elif outcome.code == 0:
        STATS["exit_0"] += 1
        counts["exit_0"] += 1
    else:
        STATS["exit_2"] += 1
        counts["exit_2"] += 1
        if usage:
            STATS["usage_errors"] += 1
        else:
            lines = [line for line in outcome.stderr.splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith("error:")]
            if not lines or not lines[-1].startswith("error: ") or len(errors) != 1:
                STATS["malformed_errors"] += 1
                problems.append(("error not one line", _tail(outcome.stderr, 3)))
            MESSAGES[f"{command}: {re.sub(r'[0-9]+', 'N', lines[-1][:70]) if lines else ''}"] += 1
            if len(lines) > 1 and lines[-1].startswith("error: "):
                STATS["exit_2_with_other_stderr_lines"] += 1
                if len(EXTRA_STDERR) < 20:
                    EXTRA_STDERR.extend(lines[:-1][:2])
    changed = sorted(name for name in after if after[name] != before[name])
    changed += sorted(name for name in before if not (case / name).exists() and not (case / name).is_symlink())
    if changed:
        STATS["inputs_changed"] += 1
        problems.append(("input changed", ", ".join(changed)))
    if outcome.code != 0 and not outcome.timed_out and new:
        STATS["leftovers"] += 1
        problems.append(("written on failure", ", ".join(new[:6])))
    elif outcome.code == 0:
        temporaries = [p for p in new if TEMPORARY.search(p)]
        if not keeps_work:
            temporaries += [p for p in new if p.endswith(".work") and "/" not in p]
        if temporaries:
            STATS["leftovers"] += 1
            problems.append(("temporary left on success", ", ".join(temporaries[:6])))
    for problem, detail in problems:
        detail = re.sub(r"-\d+-[0-9a-f]{8}", "-PID-XXXXXXXX", detail)
        counts[problem] += 1
        record(command, argv, problem, outcome, detail, inputs)
    if problems:
        STATS["failing_cases"] += 1
        if RAISE:
            raise AssertionError(f"prunekit {' '.join(argv)}: {problems}\n{_tail(combined, 12)}")
    return outcome


# ---- the kit of inputs, built once per module -------------------------------------------------------------------

@dataclass
class Kit:
    root: Path  # pristine inputs, copied into every case folder
    cases: Path  # where case folders are made
    valid: dict[str, bytes] = field(default_factory=dict)  # valid content of each file kind, to truncate / corrupt
    counter: int = 0

    @contextlib.contextmanager
    def case(self) -> Iterator[Path]:
        """A fresh folder holding copies of every input; removed afterwards."""
        self.counter += 1
        folder = self.cases / f"case-{self.counter:05d}"
        shutil.copytree(self.root, folder, symlinks=True)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _corpus_rows(n: int = 12) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(n // 2, 8))
    rows = []
    for i in range(n):  # every second row a near duplicate of the one before
        vector = base[i // 2] + (1e-4 * rng.normal(size=8) if i % 2 else 0)
        rows.append({"id": f"doc-{i}", "text": make_text(20, seed=i), "embedding": [float(v) for v in vector]})
    return rows


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Iterator[Kit]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    base = tmp_path_factory.mktemp("fuzz")
    env = {"PRUNEKIT_CACHE": str(base / "cache"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error", "NO_COLOR": "1"}
    patch = pytest.MonkeyPatch()
    for name, value in env.items():
        patch.setenv(name, value)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared two-core machine
    root = base / "inputs"
    root.mkdir()
    tiny_model("llama").save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "text.txt").write_text(make_text(1500, seed=1))
    rows = _corpus_rows()
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), root / "corpus.parquet")
    tasks = [{"context": make_text(8, seed=i), "choices": ["river", "stone", "city"], "gold": i % 3}
             for i in range(4)]
    (root / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x=rng.normal(size=(40, 6)).astype(np.float32), y=np.arange(40) % 2)
    recipe = {"model": "model", "calibration": {"source": "text.txt", "samples": 2, "seq_len": 16},
              "evaluation": {"ppl": False}, "stages": [{"method": "magnitude", "sparsity": 0.5}]}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    corpus_recipe = {"input": "corpus.jsonl", "steps": [{"cluster": {"clusters": 2}}, {"semdedup": {}},
                                                         {"dedup-filter": {"epsilon": 0.05}}]}
    (root / "corpus-recipe.yaml").write_text(yaml.safe_dump(corpus_recipe))
    made = invoke(["prune", "model", "--out", "run", "--method", "wanda", "--calib", "text.txt", "--calib-samples",
                   "2", "--calib-seq-len", "16", "--eval-text", "text.txt", "--ppl-samples", "1", "--ppl-seq-len",
                   "16"], root, timeout=300)
    assert made.code == 0, made.exception or made.stderr
    valid = {name: (root / name).read_bytes() for name in
             ("text.txt", "corpus.jsonl", "corpus.parquet", "tasks.jsonl", "data.npz", "recipe.yaml",
              "corpus-recipe.yaml")}
    valid["prunekit.json"] = (root / "run" / "prunekit.json").read_bytes()
    valid["run-recipe.yaml"] = (root / "run" / "recipe.yaml").read_bytes()
    valid["model.safetensors"] = (root / "model" / "model.safetensors").read_bytes()
    valid["config.json"] = (root / "model" / "config.json").read_bytes()
    valid["tokenizer.json"] = (root / "model" / "tokenizer.json").read_bytes()
    valid["sweep.json"] = json.dumps({"prunekit_sweep_version": 1, "model": "model", "points": [
        {"method": "wanda", "pattern": "unstructured", "sparsity": 0.5, "perplexity": 12.5, "folder": "points/x"}],
        "dense": {"perplexity": 10.0}}).encode()
    pristine = digest(root)
    yield Kit(root=root, cases=base / "cases", valid=valid)
    assert digest(root) == pristine, "the pristine inputs were changed"
    torch.set_num_threads(threads)
    patch.undo()


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.perf_counter()
    yield
    summary = {"profile": PROFILE, "seconds": round(time.perf_counter() - started, 1), **STATS,
               "per_command": {k: dict(v) for k, v in PER_COMMAND.items()},
               "distinct_findings": len(FINDINGS), "findings": list(FINDINGS.values()),
               "extra_stderr_sample": EXTRA_STDERR, "error_messages": dict(MESSAGES.most_common())}
    if os.environ.get("PRUNEKIT_FUZZ_REPORT"):
        Path(os.environ["PRUNEKIT_FUZZ_REPORT"]).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    keys = ("cases", "exit_0", "exit_2", "usage_errors", "tracebacks", "timeouts", "malformed_errors",
            "inputs_changed", "leftovers", "failing_cases")
    line = "fuzz summary: " + ", ".join(f"{k}={STATS.get(k, 0)}" for k in keys)
    line += f", distinct_findings={len(FINDINGS)}, seconds={summary['seconds']}"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\n{line}", flush=True)


def assert_no_findings(command_prefix: str) -> None:
    mine = [f for f in FINDINGS.values() if f["command"].startswith(command_prefix)]
    if mine:
        text = "\n\n".join(f"[{f['problem']}] x{f['count']} prunekit {' '.join(map(str, f['argv']))}\n"
                           f"  exit {f['exit']}; {f['detail']}\n  inputs: {f['inputs']}\n  {f['tail']}"
                           for f in mine)
        pytest.fail(f"{len(mine)} distinct failures of `{command_prefix}`:\n{text}", pytrace=False)


# ---- values ------------------------------------------------------------------------------------------------------

HUGE = [10**23, -(10**23), 2**63, 2**64]
ints = st.one_of(st.sampled_from([0, -1, 1, 2, 3, *HUGE]), st.integers(-3, 40))
bounded_ints = st.one_of(st.sampled_from([0, -1, 1, 2]), st.integers(-3, 8))  # options that set an amount of work
floats = st.one_of(st.sampled_from([0.0, -0.5, 0.5, 0.999, 1.0, 1.5, 1e308, -1e308, 1e-320, 10.0**23]),
                   st.floats(-2, 2, allow_nan=False))
special_floats = st.sampled_from([float("nan"), float("inf"), float("-inf")])
junk = st.one_of(st.none(), st.booleans(), ints, floats, special_floats, WORDS,
                 st.lists(st.one_of(ints, WORDS), max_size=3), st.dictionaries(WORDS, ints, max_size=2))
PATHS = ["text.txt", "missing.txt", "model", "model/config.json", "corpus.jsonl", "corpus.parquet", "tasks.jsonl",
         "run", "run/prunekit.json", "data.npz", "out", "missing/deep/thing", ".", "recipe.yaml"]
paths = st.sampled_from(PATHS)


# ---- (a) prune recipes -------------------------------------------------------------------------------------------

def _methods() -> list[str]:
    from prunekit.methods import names

    return names()


METHOD_NAMES = _methods()
patterns = st.sampled_from(["unstructured", "2:4", "4:8", "1:4", "0:4", "4:4", "5:4", "1:0", "a:b", "2:", "2:4:8"])
sparsities = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.9, 0.999, 1.0, -0.1, 1.5, 10**23]), st.floats(-1, 2))
WEIGHT_METHODS = [m for m in METHOD_NAMES if m in ("magnitude", "wanda", "sparsegpt", "gradient", "gblm")]

# Valid-typed values (often out of range); `mutated` then swaps a few for junk, wrong types and unknown keys.
weight_stage = st.fixed_dictionaries({"method": st.sampled_from(WEIGHT_METHODS)}, optional={
    "sparsity": sparsities, "pattern": patterns,
    "targets": st.lists(st.sampled_from(["*", "mlp.*", "self_attn.q_proj", "nothing.*", ""]), max_size=3),
    "layers": st.lists(st.sampled_from([0, 1, 2, -1, 5, 10**23]), max_size=3),
    "allocation": st.sampled_from(["uniform", "uniform", "global", "owl", "bogus"]),
    "min_density": floats, "owl_m": floats, "owl_lambda": st.sampled_from([0.0, 0.05, 0.08, 0.5, -0.1]),
    "gradient_samples": st.sampled_from([1, 2, 0, -1, *HUGE]), "block_size": st.sampled_from([4, 8, 16, 128, 3, 0]),
    "damping": st.sampled_from([0.01, 0.1, 0.0, -1.0, 1e308]),
})
structured_stage = st.fixed_dictionaries({"method": st.sampled_from(METHOD_NAMES)}, optional={
    "part": st.sampled_from(["blocks", "mlp", "heads", "kv-heads", "bogus"]),
    "sparsity": sparsities, "size": st.one_of(st.integers(-1, 5), st.sampled_from(HUGE)),
    "param_fraction": sparsities, "bias_compensation": st.booleans(),
    "gradient_samples": st.sampled_from([1, 2, 0, *HUGE]), "seed": ints,
})
calibration = st.fixed_dictionaries({}, optional={
    "source": st.sampled_from(["text.txt", "text.txt", "corpus.jsonl", "corpus.parquet", *PATHS]),
    "samples": st.sampled_from([1, 2, 2, 0, -1, *HUGE]), "seq_len": st.sampled_from([8, 16, 16, 0, 257, *HUGE]),
    "text_column": st.sampled_from(["text", "text", "id", "embedding", "nope"]),
    "batch_size": st.sampled_from([1, 2, 0, *HUGE]),
})
evaluation = st.fixed_dictionaries({}, optional={
    "ppl": st.booleans(), "dense": st.booleans(),
    "source": st.sampled_from(["text.txt", "text.txt", "corpus.jsonl", *PATHS]),
    "samples": st.sampled_from([1, 1, 0, -1, 1000, *HUGE]), "seq_len": st.sampled_from([8, 16, 0, 257, *HUGE]),
    "text_column": st.sampled_from(["text", "nope"]),
})
rarely_true = st.sampled_from([False, False, False, True])
valid_recipes = st.fixed_dictionaries(
    {"model": st.just("model"), "stages": st.lists(st.one_of(weight_stage, weight_stage, structured_stage),
                                                   min_size=1, max_size=2)},
    optional={"seed": ints, "dtype": st.sampled_from(["auto", "float32", "bfloat16", "float16", "int8"]),
              "device": st.sampled_from(["cpu", "cpu", "auto", "cuda:7", "tpu", "meta"]),
              "trust_remote_code": rarely_true, "allow_pickle": rarely_true, "stream": st.booleans(),
              "calibration": calibration, "evaluation": evaluation})


def _containers(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Every (path, dict or list) inside a document, the document itself first."""
    if isinstance(value, dict | list):
        yield path, value
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            yield from _containers(child, (*path, key))


@st.composite
def mutated(draw: st.DrawFn, documents: st.SearchStrategy) -> Any:
    """A valid-typed document with 0-3 mutations: a value replaced by junk, a key dropped, an unknown key added;
    or (1 in 8) a document that is not a mapping at all."""
    if draw(st.integers(0, 7)) == 0:
        return draw(junk)
    doc = draw(documents)
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        containers = list(_containers(doc))
        _, target = draw(st.sampled_from(containers))
        action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        if isinstance(target, dict):
            if action == "add" or not target:
                target[draw(st.sampled_from(["bogus_key", "Sparsity", "stage", "samples", "seed"]))] = draw(junk)
            elif action == "drop":
                target.pop(draw(st.sampled_from(sorted(target))))
            else:
                target[draw(st.sampled_from(sorted(target)))] = draw(junk)
        elif target:
            index = draw(st.integers(0, len(target) - 1))
            if action == "drop":
                target.pop(index)
            else:
                target[index] = draw(junk)
    return doc


recipe_documents = mutated(valid_recipes)


def _source_given(doc: Any, section: str) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get(section), dict) and isinstance(doc[section].get("source"),
                                                                                         str)


def prune_recipe_argv(doc: Any) -> list[str]:
    """prune --recipe with whatever the recipe lacks that would download (the model, wikipedia) given as flags."""
    argv = ["prune", "--recipe", "recipe.yaml", "--out", "out"]
    if not (isinstance(doc, dict) and isinstance(doc.get("model"), str)):
        argv.insert(1, "model")
    if not _source_given(doc, "calibration"):
        argv += ["--calib", "text.txt"]
    if not _source_given(doc, "evaluation"):
        argv += ["--eval-text", "text.txt"]
    if not (isinstance(doc, dict) and isinstance(doc.get("calibration"), dict)):
        argv += ["--calib-samples", "2", "--calib-seq-len", "16"]
    if not (isinstance(doc, dict) and isinstance(doc.get("evaluation"), dict)):
        argv += ["--ppl-samples", "1", "--ppl-seq-len", "16"]
    return argv


def _safe_document(doc: Any) -> bool:
    text = json.dumps(doc, default=str)
    return all(offline_safe(s) or s in ("", "*") for s in re.findall(r'"([^"]*)"', text) if s not in ("source",))


def test_prune_recipes(kit: Kit) -> None:
    @examples(60)
    @given(doc=recipe_documents.filter(_safe_document))
    def run(doc: Any) -> None:
        if isinstance(doc, dict):  # keep every case small unless the fuzzer set the sizes itself
            for section, sizes in (("calibration", {"samples": 2, "seq_len": 16}),
                                   ("evaluation", {"samples": 1, "seq_len": 16})):
                if isinstance(doc.get(section), dict):
                    doc[section] = {**sizes, **doc[section]}
                    if doc[section].get("source") == "":
                        doc[section]["source"] = "text.txt"
        with kit.case() as case:
            (case / "recipe.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
            check_case("prune --recipe", prune_recipe_argv(doc), case, {"recipe.yaml": yaml.safe_dump(doc)[:600]})

    run()
    assert_no_findings("prune --recipe")


# ---- (b) corpus recipes ------------------------------------------------------------------------------------------

keeps = st.sampled_from([0.5, 0.25, 1.0, 0.0, -0.5, 1.5, 10.0**23])
corpus_step_settings: dict[str, st.SearchStrategy] = {
    "embed": st.fixed_dictionaries({"model": st.sampled_from(["model", "model", "missing", "text.txt"])},
                                   optional={"batch_size": st.sampled_from([1, 4, 0, -1]),
                                             "threads": st.sampled_from([1, 0, -1])}),
    "perplexity": st.fixed_dictionaries({"model": st.sampled_from(["model", "model", "missing", "run"])}, optional={
        "max_tokens": st.sampled_from([4, 8, 0, -1, *HUGE]), "batch_tokens": st.sampled_from([16, 64, 0, -1]),
        "dtype": st.sampled_from(["auto", "float32", "int8"])}),
    "cluster": st.fixed_dictionaries({}, optional={
        "clusters": st.sampled_from([1, 2, 3, 0, -1, 100, *HUGE]), "sample_size": st.sampled_from([2, 100, 0, -1]),
        "iterations": st.sampled_from([1, 5, 0, -1]), "spherical": st.booleans(), "seed": ints}),
    "semdedup": st.just({}),
    "dedup-filter": st.fixed_dictionaries({}, optional={"epsilon": floats}),
    "score-filter": st.fixed_dictionaries({}, optional={
        "column": st.sampled_from(["perplexity", "centroid_distance", "text", "embedding", "id", "nope"]),
        "keep": keeps, "keep_from": st.sampled_from(["lowest", "middle", "highest", "bogus"])}),
    "threshold-filter": st.fixed_dictionaries({}, optional={
        "column": st.sampled_from(["perplexity", "centroid_distance", "nope"]), "minimum": floats,
        "maximum": floats}),
    "quotas": st.fixed_dictionaries({}, optional={"keep": keeps, "temperature": floats,
                                                  "neighbors": st.sampled_from([1, 2, 20, 0, -1])}),
    "dedup": st.fixed_dictionaries({}, optional={"epsilon": floats, "clusters": st.sampled_from([2, 3, 0]),
                                                 "seed": ints}),
    "d4": st.fixed_dictionaries({}, optional={"epsilon": floats, "keep": keeps,
                                              "clusters": st.sampled_from([2, 3, 0])}),
}
corpus_step = st.one_of(*(settings_.map(lambda v, n=name: {n: v}) for name, settings_ in corpus_step_settings.items()),
                        st.just({"bogus-step": {}}))
valid_corpus_recipes = st.fixed_dictionaries(
    {"steps": st.lists(corpus_step, min_size=0, max_size=4)},
    optional={"input": st.sampled_from(["corpus.jsonl", "corpus.parquet", *PATHS]),
              "text_column": st.sampled_from(["text", "id", "embedding", "nope"]),
              "id_column": st.sampled_from(["id", "id", "text", "nope"]),
              "executor": st.sampled_from(["local", "local", "bogus", "", "LOCAL"]),
              "output_format": st.sampled_from(["parquet", "jsonl", "csv"])})


def _no_default_models(doc: Any) -> Any:
    """Embed and perplexity steps always name a model here: their defaults download."""
    if isinstance(doc, dict) and isinstance(doc.get("steps"), list):
        for step in doc["steps"]:
            if isinstance(step, dict):
                for name in ("embed", "perplexity"):
                    if name in step and not (isinstance(step[name], dict) and isinstance(step[name].get("model"),
                                                                                         str)):
                        step[name] = {**(step[name] if isinstance(step[name], dict) else {}), "model": "model"}
    return doc


corpus_documents = mutated(valid_corpus_recipes).map(_no_default_models)


def test_corpus_recipes(kit: Kit) -> None:
    @examples(40)
    @given(doc=corpus_documents.filter(_safe_document), argument=st.sampled_from([None, "corpus.jsonl",
                                                                                  "corpus.parquet", "missing.jsonl"]))
    def run(doc: Any, argument: str | None) -> None:
        with kit.case() as case:
            (case / "corpus-recipe.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
            argv = ["data", "prune", *([argument] if argument else []), "--recipe", "corpus-recipe.yaml", "--out",
                    "out"]
            check_case("data prune --recipe", argv, case, {"corpus-recipe.yaml": yaml.safe_dump(doc)[:600]},
                       keeps_work=True)

    run()
    assert_no_findings("data prune --recipe")


# ---- (c) command lines -------------------------------------------------------------------------------------------

SMALL_PRUNE = ["--calib", "text.txt", "--calib-samples", "2", "--calib-seq-len", "16", "--eval-text", "text.txt",
               "--ppl-samples", "1", "--ppl-seq-len", "16"]
SKELETONS: dict[str, list[str]] = {
    "prune": ["prune", "model", "--out", "out", "--method", "magnitude", *SMALL_PRUNE],
    "eval": ["eval", "model", "--text", "text.txt", "--ppl-samples", "1", "--ppl-seq-len", "16", "--device", "cpu"],
    "recover": ["recover", "model", "--out", "out", "--steps", "1", "--batch-size", "1", "--seq-len", "16", "--text",
                "text.txt", "--ppl-samples", "1", "--ppl-seq-len", "16", "--lora-rank", "2", "--lora-alpha", "4"],
    "sweep": ["sweep", "model", "--out", "out", "--methods", "magnitude", "--sparsity", "0.5", "--device", "cpu",
              *SMALL_PRUNE],
    "search": ["search", "model", "--target", "params=0.7", "--out", "out", "--generations", "1", "--offspring", "2",
               "--fitness-samples", "1", "--device", "cpu", *SMALL_PRUNE],
    "report": ["report", "run", "--out", "report.html"],
    "bench": ["bench", "model", "--prompt-len", "4", "--new-tokens", "2", "--batch-sizes", "1", "--repeats", "1",
              "--warmup", "0", "--threads", "1", "--device", "cpu"],
    "fetch": ["fetch"],
    "models": ["models"],
    "data prune": ["data", "prune", "digits", "--out", "out", "--score", "random", "--keep", "0.5", "--epochs", "1",
                   "--runs", "1", "--threads", "1", "--batch-size", "256"],
    "data dedup": ["data", "dedup", "corpus.jsonl", "--out", "out", "--embedding-column", "embedding", "--clusters",
                   "2"],
    "data ppl-filter": ["data", "ppl-filter", "corpus.jsonl", "--out", "out", "--model", "model", "--max-tokens",
                        "8", "--keep", "0.5"],
    "data experiment": ["data", "experiment", "data.npz", "--out", "out", "--methods", "random", "--fractions",
                        "0.5", "--seeds", "0", "--epochs", "1", "--score-runs", "1", "--workers", "1", "--threads",
                        "1", "--eval-size", "0.5", "--batch-size", "64"],
}
# How many generated command lines each command gets in the `ci` profile (the slow ones fewer).
CLI_EXAMPLES = {"prune": 30, "eval": 14, "recover": 14, "sweep": 10, "search": 8, "report": 12, "bench": 3, "fetch": 3,
                "models": 2, "data prune": 10, "data dedup": 14, "data ppl-filter": 8, "data experiment": 5}
# Options whose value is an amount of work: never huge (a correct run could take forever).
WORK_AMOUNTS = {"--steps", "--epochs", "--runs", "--score-runs", "--repeats", "--warmup", "--new-tokens",
                "--prompt-len", "--workers", "--threads", "--checkpoint-every", "--calib-samples", "--ppl-samples",
                "--limit", "--gradient-samples", "--generations", "--offspring", "--survivors", "--fitness-samples",
                "--recover-steps"}
CHOICES: dict[str, list[str]] = {
    "--method": ["magnitude", "wanda", "sparsegpt", "gradient", "block-last", "block-random", "angular", "flap",
                 "activation", "wanda-sp", "taylor", "lora", "distill", "bogus", "MAGNITUDE"],
    "--methods": ["magnitude", "wanda", "magnitude,wanda", "bogus", ",", "random", "random+kd", "el2n", "ccs-el2n"],
    "--pattern": ["unstructured", "2:4", "4:8", "0:4", "5:4", "1:0", "x", "2:4,4:8"],
    "--target": ["params=0.7", "params=0.001", "params=1", "decode=1.3", "prefill=1.2x", "decode=0.5", "params",
                 "bogus=1", "params=x", "memory=1GB"],
    "--space": ["sparsity", "depth", "DEPTH", "width", "depth,width", "width,depth,", "depth,bogus",
                "heads,depth", "depth,heads,width", "sparsity,depth", "depth,sparsity,width", "heads,sparsity"],
    "--width-method": ["wanda-sp", "flap", "activation", "taylor", "wanda", "bogus"],
    "--recover": ["lora", "distill", "bogus"],
    "--part": ["mlp", "heads", "kv-heads", "blocks", "bogus"],
    "--allocation": ["uniform", "global", "owl", "bogus"],
    "--device": ["cpu", "auto", "cuda", "cuda:3", "meta", "bogus"],
    "--dtype": ["auto", "float32", "bfloat16", "float16", "int8"],
    "--prompt": ["plain", "bigbench", "bogus"],
    "--tasks": ["tasks.jsonl", "tasks.jsonl,tasks.jsonl", "missing.jsonl", "text.txt", "bogus-task"],
    "--format": ["parquet", "jsonl", "csv"],
    "--executor": ["local", "bogus"],
    "--score": ["el2n", "random", "prototype", "forgetting", "bogus"],
    "--strategy": ["hardest", "easiest", "middle", "random", "ccs", "bogus"],
    "--keep-from": ["lowest", "middle", "highest", "bogus"],
    "--sparsity": ["0.5", "0.3,0.5", "1.5", "-1", "a,b", "", "nan"],
    "--fractions": ["0.5", "0.5,0.3", "0", "1.5", "x"],
    "--seeds": ["0", "0,1", "x", "-1"],
    "--batch-sizes": ["1", "1,2", "0", "-1", "x"],
    "--embedding-column": ["embedding", "text", "bogus"],
    "--text-column": ["text", "embedding", "id", "bogus"],
    "--id-column": ["id", "text", "bogus"],
    "--out": ["out", "out", "model", "text.txt", "run", "run/inner", "model/inner", "missing/deep/out", ".",
              "corpus.jsonl", "out.html"],
    "--work-dir": ["work", "model", "text.txt", "run", "out", "."],
    "--teacher": ["model", "run", "missing", "text.txt"],
    "--model": ["model", "run", "missing", "text.txt"],
    "--calib": ["text.txt", "corpus.jsonl", "corpus.parquet", "model", "missing.txt"],
    "--eval-text": ["text.txt", "corpus.jsonl", "model", "missing.txt"],
    "--text": ["text.txt", "corpus.jsonl", "model", "missing.txt"],
    "--recipe": ["recipe.yaml", "missing.yaml", "model", "text.txt", "corpus-recipe.yaml"],
}
SKIP_OPTIONS = {"--ray-address"}  # joining a Ray cluster: slow, and not what this fuzzes
NO_EMPTY = {"--calib", "--eval-text", "--text", "--model", "--teacher", "--tasks", "--methods"}  # '' = the default


@dataclass(frozen=True)
class Option:
    name: str  # the long name
    kind: str  # flag | int | float | text
    other: str | None = None  # the --no- form of a boolean flag


def _base_type(annotation: Any) -> type:
    """int, float, bool, str or Path from an `Annotated[X | None, ...]` hint."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args and typing.get_origin(annotation) is not list else (
        annotation if isinstance(annotation, type) else str)


def _options(path: tuple[str, ...]) -> list[Option]:
    """The real options of the command at `path`: names from the command typer builds, kinds from the hints."""
    import typer.main

    from prunekit.cli import app

    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    hints = typing.get_type_hints(command.callback, include_extras=True)
    options = []
    for param in command.params:
        if not param.opts or not param.opts[0].startswith("-") or "--help" in param.opts \
                or set(param.opts) & SKIP_OPTIONS:
            continue
        long = max(param.opts, key=len)
        kind = _base_type(hints.get(param.name, str))
        if getattr(param, "is_flag", False) or kind is bool:
            other = max(param.secondary_opts, key=len) if param.secondary_opts else None
            options.append(Option(long, "flag", other))
        else:
            options.append(Option(long, {int: "int", float: "float"}.get(kind, "text")))
    return options


def _number_text(value: float | int) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def option_values(option: Option) -> st.SearchStrategy[list[str]]:
    """`[NAME, VALUE]` (or `[FLAG]`) with a random, often wrong, value."""
    if option.kind == "flag":
        return st.sampled_from([[option.name]] + ([[option.other]] if option.other else []))
    number = bounded_ints if option.name in WORK_AMOUNTS else ints
    texts: list[st.SearchStrategy] = [WORDS, paths]
    if option.name in CHOICES:
        texts = [st.sampled_from(CHOICES[option.name])] * 3 + texts
    if option.name not in NO_EMPTY:
        texts.append(st.just(""))
    if option.kind == "int":
        value = st.one_of(number.map(str), number.map(str), st.sampled_from(["1.5", "abc", "", "1e3"]))
    elif option.kind == "float":
        value = st.one_of(floats.map(_number_text), special_floats.map(str), number.map(str),
                          st.sampled_from(["abc", ""]))
    else:
        value = st.one_of(*texts, number.map(str))
    return value.filter(lambda v: option.name not in NO_EMPTY or offline_safe(v) or v in PATHS).map(
        lambda v: [option.name, v])


@st.composite
def command_lines(draw: st.DrawFn, command: str) -> list[str]:
    skeleton = list(SKELETONS[command])
    options = _options(tuple(command.split()))
    if not options or command == "models":
        extra = draw(st.lists(WORDS, max_size=2)) if command in ("fetch", "models") else []
        return [*skeleton, *extra] if command != "fetch" or extra else [*skeleton, "bogus"]
    chosen = draw(st.lists(st.sampled_from(options), min_size=1, max_size=4, unique=True))
    argv = skeleton
    if draw(st.integers(0, 5)) == 0 and command not in ("fetch", "models"):  # the positional argument too
        position = 2 if command.startswith("data ") else 1
        argv[position] = draw(st.sampled_from([p for p in PATHS if p != "."] + ["bogus-model"]))
    for option in chosen:
        argv += draw(option_values(option))
    return argv


@pytest.mark.parametrize("command", list(SKELETONS))
def test_command_lines(kit: Kit, command: str) -> None:
    @examples(CLI_EXAMPLES[command])
    @given(argv=command_lines(command))
    def run(argv: list[str]) -> None:
        with kit.case() as case:
            check_case(command, argv, case, keeps_work=command.startswith("data "))

    run()
    assert_no_findings(command)


# ---- (d) random bytes as every file-typed input -----------------------------------------------------------------

def corrupted(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, invalid UTF-8, a truncation of `valid`, or `valid` with a few bytes changed."""
    n = len(valid)
    truncated = st.integers(0, max(0, n - 1)).map(lambda cut: valid[:cut])
    head_cut = st.sampled_from([1, 2, 7, 8, 9, 16, 64]).map(lambda cut: valid[: min(cut, n)])

    @st.composite
    def flipped(draw: st.DrawFn) -> bytes:
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 4))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)

    invalid_utf8 = st.sampled_from([b"\xff\xfe\x00text", b"caf\xe9\n", b"\xc3(", valid[: n // 2] + b"\x80\xff"])
    return st.one_of(st.binary(max_size=256), invalid_utf8, truncated, head_cut, flipped())


SMALL_EVAL = ["--ppl-samples", "1", "--ppl-seq-len", "16"]
# input kind -> (the valid file it corrupts, where the bytes go, the command line, commands' label)
FILE_INPUTS: dict[str, tuple[str, str, list[str]]] = {
    "prune --recipe": ("recipe.yaml", "recipe.yaml", ["prune", "model", "--recipe", "recipe.yaml", "--out", "out",
                                                      *SMALL_PRUNE]),
    "prune --calib .txt": ("text.txt", "calib.txt", ["prune", "model", "--out", "out", "--method", "wanda",
                                                     "--calib", "calib.txt", "--calib-samples", "2",
                                                     "--calib-seq-len", "16", "--no-eval"]),
    "prune --calib .jsonl": ("corpus.jsonl", "calib.jsonl", ["prune", "model", "--out", "out", "--method", "wanda",
                                                             "--calib", "calib.jsonl", "--calib-samples", "2",
                                                             "--calib-seq-len", "8", "--no-eval"]),
    "prune --calib .json": ("corpus.jsonl", "calib.json", ["prune", "model", "--out", "out", "--method", "wanda",
                                                           "--calib", "calib.json", "--calib-samples", "2",
                                                           "--calib-seq-len", "8", "--no-eval"]),
    "prune --calib .parquet": ("corpus.parquet", "calib.parquet", ["prune", "model", "--out", "out", "--method",
                                                                   "wanda", "--calib", "calib.parquet",
                                                                   "--calib-samples", "2", "--calib-seq-len", "8",
                                                                   "--no-eval"]),
    "eval --text": ("text.txt", "held.txt", ["eval", "model", "--text", "held.txt", *SMALL_EVAL]),
    "eval --tasks": ("tasks.jsonl", "mytasks.jsonl", ["eval", "model", "--no-ppl", "--tasks", "mytasks.jsonl"]),
    "eval model.safetensors": ("model.safetensors", "model/model.safetensors", ["eval", "model", "--text",
                                                                                "text.txt", *SMALL_EVAL]),
    "eval config.json": ("config.json", "model/config.json", ["eval", "model", "--text", "text.txt", *SMALL_EVAL]),
    "eval tokenizer.json": ("tokenizer.json", "model/tokenizer.json", ["eval", "model", "--text", "text.txt",
                                                                       *SMALL_EVAL]),
    "eval .gguf": ("model.safetensors", "weights.gguf", ["eval", "weights.gguf", "--text", "text.txt",
                                                         *SMALL_EVAL]),
    "recover --text": ("text.txt", "train.txt", ["recover", "model", "--out", "out", "--steps", "1",
                                                 "--batch-size", "1", "--seq-len", "16", "--text", "train.txt",
                                                 *SMALL_EVAL, "--lora-rank", "2"]),
    "data dedup .jsonl": ("corpus.jsonl", "in.jsonl", ["data", "dedup", "in.jsonl", "--out", "out",
                                                       "--embedding-column", "embedding", "--clusters", "2"]),
    "data dedup .parquet": ("corpus.parquet", "in.parquet", ["data", "dedup", "in.parquet", "--out", "out",
                                                             "--embedding-column", "embedding", "--clusters", "2"]),
    "data prune --recipe": ("corpus-recipe.yaml", "corpus-recipe.yaml", ["data", "prune", "corpus.jsonl",
                                                                         "--recipe", "corpus-recipe.yaml", "--out",
                                                                         "out"]),
    "data prune .npz": ("data.npz", "in.npz", ["data", "prune", "in.npz", "--out", "out", "--score", "random"]),
    "report prunekit.json": ("prunekit.json", "run/prunekit.json", ["report", "run", "--out", "report.html"]),
    "report recipe.yaml": ("run-recipe.yaml", "run/recipe.yaml", ["report", "run", "--out", "report.html"]),
    "report sweep.json": ("sweep.json", "sweeprun/sweep.json", ["report", "sweeprun", "--out", "report.html"]),
}
FILE_EXAMPLES = {"prune --recipe": 6, "eval model.safetensors": 8, "report prunekit.json": 8,
                 "data dedup .jsonl": 6, "data dedup .parquet": 6, "prune --calib .parquet": 6, "eval --tasks": 6}


@pytest.mark.parametrize("kind", list(FILE_INPUTS))
def test_random_bytes(kit: Kit, kind: str) -> None:
    source, target, argv = FILE_INPUTS[kind]

    @examples(FILE_EXAMPLES.get(kind, 5))
    @given(data=corrupted(kit.valid[source]))
    def run(data: bytes) -> None:
        with kit.case() as case:
            (case / target).parent.mkdir(parents=True, exist_ok=True)
            (case / target).write_bytes(data)
            check_case(kind, argv, case, {target: f"{len(data)} bytes: {data[:80]!r}"},
                       keeps_work=argv[0] == "data")

    run()
    assert_no_findings(kind)

