"""Reliability of the text-corpus pipeline: bad input is one line with nothing written, interrupted runs leave nothing
that looks finished and reruns clean up after them, ragged embeddings are refused, and the input's own ids survive.

Corpora carry precomputed `embedding` columns, so no test loads (or downloads) a model."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_cli import assert_one_line_error, run_cli

from prunekit.corpus.io import read_corpus
from prunekit.corpus.perplexity import PerplexityStep
from prunekit.corpus.pipeline import run_pipeline
from prunekit.corpus.recipe import dedup_steps, load_recipe
from prunekit.corpus.select import ScoreFilter
from prunekit.corpus.step import embedding_array, embeddings_of
from prunekit.errors import PrunekitError
from prunekit.outputs import INCOMPLETE

ROOT = Path(__file__).resolve().parents[1]


def vectors_corpus(path, n=60, copies=6, dim=8, seed=0, ids=None, extra=None):
    """`n` loose random vectors plus `copies` near-copies of the first ones (so dedup drops some), as Parquet."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, dim))
    vectors = np.concatenate([base, base[:copies] + 1e-4 * rng.normal(size=(copies, dim))]).astype(np.float32)
    columns = {"text": [f"document {i}" for i in range(len(vectors))], "embedding": embedding_array(vectors)}
    if ids is not None:
        columns = {"id": ids, **columns}
    pq.write_table(pa.table({**columns, **(extra or {})}), path)
    return path


def jsonl(path, rows, raw=b""):
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + raw)
    return path


def tree(root):
    """Every file (with its bytes) and folder under `root`: equal before and after means nothing was written and no
    input changed."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def quiet(_message):
    pass


def assert_nothing_written(tmp_path, before, out):
    assert not out.exists() and not out.with_name(f"{out.name}.work").exists()
    assert tree(tmp_path) == before


# --- defect 10: bad input writes nothing ------------------------------------------------------------------------


def _bad_cases(tmp):
    """(name, source, steps, keyword arguments, expected message) of ~20 kinds of bad input."""
    ok = vectors_corpus(tmp / "ok.parquet")
    texts = [{"text": f"t{i}", "embedding": [float(i), 1.0]} for i in range(50)]
    cases = [
        ("unknown text column", ok, dedup_steps(clusters=2), {"text_column": "body"}, "no text column 'body'"),
        ("unknown id column", ok, dedup_steps(clusters=2), {"id_column": "doc"}, "no id column 'doc'"),
        ("duplicate ids late in the file",
         jsonl(tmp / "dup.jsonl", [{"doc": f"d{i}", **r} for i, r in enumerate(texts)] + [{"doc": "d3", **texts[0]}]),
         dedup_steps(clusters=2), {"id_column": "doc", "batch_size": 8}, "'d3' appears more than once"),
        ("empty ids", jsonl(tmp / "noid.jsonl", [{"doc": "a", **texts[0]}, {"doc": None, **texts[1]}]),
         dedup_steps(clusters=1), {"id_column": "doc"}, "empty ids"),
        ("empty corpus", jsonl(tmp / "empty.jsonl", []), dedup_steps(clusters=1), {}, "empty"),
        ("bad byte late in a jsonl", jsonl(tmp / "latin1.jsonl", texts, b'{"text": "caf\xe9"}\n'),
         dedup_steps(clusters=2), {"batch_size": 8}, r"latin1.jsonl:51 is not UTF-8"),
        ("a line that is not JSON", jsonl(tmp / "broken.jsonl", texts, b'{"text": \n'), dedup_steps(clusters=2),
         {}, r"broken.jsonl:51 is not valid JSON"),
        ("corrupt parquet", _corrupt_parquet(tmp / "corrupt.parquet"), dedup_steps(clusters=2), {},
         "not a readable Parquet file"),
        ("not parquet at all", _write(tmp / "garbage.parquet", b"hello, not parquet"), dedup_steps(clusters=2), {},
         "not a readable Parquet file"),
        ("a .txt file", _write(tmp / "corpus.txt", b"one document\nanother\n"), dedup_steps(clusters=2), {},
         "unsupported corpus file type '.txt'"),
        ("missing input", tmp / "missing.jsonl", dedup_steps(clusters=2), {}, "not found"),
        ("no embedding column", jsonl(tmp / "plain.jsonl", [{"text": "a"}, {"text": "b"}]),
         dedup_steps(clusters=1), {}, "needs the column 'embedding'.*add the embed step"),
        ("no score column", ok, [ScoreFilter("perplexity", keep=0.5)], {}, "needs the column 'perplexity'"),
        ("score column of strings", vectors_corpus(tmp / "strscore.parquet", extra={"quality": ["x"] * 66}),
         [ScoreFilter("quality", keep=0.5)], {}, "needs numbers in column 'quality'"),
        ("embedding column of strings", jsonl(tmp / "strvec.jsonl", [{"text": "a", "embedding": ["x", "y"]}] * 3),
         dedup_steps(clusters=1), {}, "needs lists of numbers"),
        ("ragged embeddings", _ragged(tmp / "ragged.jsonl"), dedup_steps(clusters=2), {"batch_size": 4},
         "row id 7 has 16 values, earlier rows 8"),
        ("a row without an embedding",
         jsonl(tmp / "nullvec.jsonl", [{"text": "a", "embedding": [1.0, 2.0]}, {"text": "b", "embedding": None}]),
         dedup_steps(clusters=1), {}, "row id 1 has no 'embedding' vector"),
        ("a NaN in an embedding", _write(tmp / "nan.jsonl", b'{"text": "a", "embedding": [1.0, 2.0]}\n'
                                          b'{"text": "b", "embedding": [NaN, 2.0]}\n'),
         dedup_steps(clusters=1), {}, "row id 1 has a NaN or infinite value in 'embedding'"),
        ("more clusters than rows", ok, dedup_steps(clusters=500), {}, "500 clusters for 66 rows"),
        ("unknown executor", ok, dedup_steps(clusters=2), {"executor": "spark"}, "unknown executor"),
        ("unknown output format", ok, dedup_steps(clusters=2), {"output_format": "csv"}, "unknown output format"),
        ("reference model not found", ok, [PerplexityStep(model="no-such-model")], {},
         "reference model 'no-such-model' not found"),
        ("a reserved column", vectors_corpus(tmp / "reserved.parquet", extra={"drop_reason": ["x"] * 66}),
         dedup_steps(clusters=2), {}, "'drop_reason' is reserved"),
        ("text that is not text", jsonl(tmp / "listtext.jsonl", [{"text": ["a", "b"], "embedding": [1.0]}]),
         dedup_steps(clusters=1), {}, "holds list<item: string> values, not text"),
    ]
    return cases


def _write(path, data):
    path.write_bytes(data)
    return path


def _corrupt_parquet(path):
    """A Parquet file whose footer is intact but whose data pages are overwritten."""
    vectors_corpus(path, n=400)
    data = bytearray(path.read_bytes())
    data[8:4000] = b"\x07" * (4000 - 8)
    path.write_bytes(bytes(data))
    return path


def _ragged(path):
    """Rows of 8 values and one of 16, in the second batch of 4: the check spans batches."""
    return jsonl(path, [{"text": f"t{i}", "embedding": [float(i)] * (16 if i == 7 else 8)} for i in range(12)])


def test_defect10_bad_input_writes_nothing(tmp_path):
    cases = _bad_cases(tmp_path)
    assert len(cases) >= 20
    before = tree(tmp_path)
    for name, source, steps, kwargs, message in cases:
        out = tmp_path / "out"
        with pytest.raises(PrunekitError, match=message) as caught:
            run_pipeline(source, steps, out, say=quiet, **kwargs)
        assert "\n" not in str(caught.value), name
        assert not out.exists() and not (tmp_path / "out.work").exists(), name
        assert tree(tmp_path) == before, name


def test_defect10_work_dir_must_be_prunekits_own(tmp_path):
    source = vectors_corpus(tmp_path / "in.parquet")
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = tree(tmp_path)
    for work, message in [(mine, "prunekit did not make"), (tmp_path, "is the input"),
                          (source, "is the input"), (tmp_path / "out" / "w", "overlap")]:
        with pytest.raises(PrunekitError, match=message):
            run_pipeline(source, dedup_steps(clusters=2), tmp_path / "out", work_dir=work, say=quiet)
        assert tree(tmp_path) == before, work
    # A new folder becomes a marked work folder, which a later run reuses.
    run_pipeline(source, dedup_steps(clusters=2), tmp_path / "out", work_dir=tmp_path / "w", say=quiet)
    assert (tmp_path / "w" / ".prunekit-work").exists() and (tmp_path / "w" / "03-dedup-filter" / "COMPLETE").exists()


def test_defect10_bad_input_through_the_cli_writes_nothing(tmp_path, capsys, monkeypatch):
    source = vectors_corpus(tmp_path / "in.parquet")
    jsonl(tmp_path / "latin1.jsonl", [{"text": "a"}], b'{"text": "caf\xe9"}\n')
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"input: {source}\nsteps:\n  - cluster: {{clusters: 2}}\n  - semdedup: {{}}\n"
                      "  - dedup-filter: {epsilon: abc}\n")
    before = tree(tmp_path)
    out = tmp_path / "out"
    runs = [
        (["data", "dedup", str(source), "--embedding-column", "embedding", "--text-column", "body"], "body"),
        (["data", "dedup", str(tmp_path / "latin1.jsonl"), "--embedding-column", "embedding"], "not UTF-8"),
        (["data", "dedup", str(source), "--embedding-column", "embedding", "--clusters", "2", "--work-dir",
          str(mine)], "prunekit did not make"),
        (["data", "dedup", str(source), "--embedding-column", "embedding", "--clusters", "999"], "999 clusters"),
        (["data", "ppl-filter", str(source), "--keep", "2"], "keep=2"),
        (["data", "prune", "--recipe", str(recipe)], "epsilon='abc'"),
    ]
    for args, message in runs:
        code, _, err = run_cli([*args, "--out", str(out)], capsys, monkeypatch)
        assert code == 2 and message in err, (args, err)
        assert_one_line_error(err)
        assert_nothing_written(tmp_path, before, out)


def test_defect10_cli_process_exits_2_with_one_line(tmp_path):
    jsonl(tmp_path / "plain.jsonl", [{"text": "a"}, {"text": "b"}])
    out = tmp_path / "out"
    before = tree(tmp_path)
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "prunekit"), "data", "dedup", str(tmp_path / "plain.jsonl"),
                           "--embedding-column", "embedding", "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr)
    assert "needs the column 'embedding'" in done.stderr
    assert_nothing_written(tmp_path, before, out)


# --- defect 9: unreadable input and wrong types are one-line errors ----------------------------------------------


def test_defect9_unreadable_corpus_files_are_one_line_errors(tmp_path):
    jsonl(tmp_path / "a.jsonl", [{"text": "fine"}], b'{"text": "\xff\xfe"}\n')
    with pytest.raises(PrunekitError, match=r"corpus .*a.jsonl:2 is not UTF-8 text \(byte 0xff\): save it as UTF-8"):
        list(read_corpus(tmp_path / "a.jsonl"))
    _write(tmp_path / "b.txt", "caf\xe9\n".encode("latin-1"))
    with pytest.raises(PrunekitError, match="unsupported corpus file type '.txt'.*jsonl"):
        list(read_corpus(tmp_path / "b.txt"))
    with pytest.raises(PrunekitError, match="corpus .*corrupt.parquet is not a readable Parquet file"):
        list(read_corpus(_corrupt_parquet(tmp_path / "corrupt.parquet")))
    _write(tmp_path / "short.parquet", b"PAR1\x00\x00")
    with pytest.raises(PrunekitError, match="not a readable Parquet file"):
        list(read_corpus(tmp_path / "short.parquet"))
    # A footer whose column name is no longer UTF-8 (pyarrow raises UnicodeDecodeError when opening it).
    data = bytearray(vectors_corpus(tmp_path / "names.parquet").read_bytes())
    at = data.index(b"embedding", len(data) - 1000)  # its name in the footer schema
    data[at] = 0x87
    _write(tmp_path / "names.parquet", bytes(data))
    with pytest.raises(PrunekitError, match="names.parquet is not a readable Parquet file"):
        list(read_corpus(tmp_path / "names.parquet"))


def test_defect9_missing_columns_name_the_column_and_the_fix(tmp_path):
    jsonl(tmp_path / "plain.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(PrunekitError, match=r"step 1 \(cluster\) needs the column 'embedding'.*plain.jsonl "
                                            r"\(columns: id, text\).*add the embed step before it"):
        run_pipeline(tmp_path / "plain.jsonl", dedup_steps(clusters=1), tmp_path / "o", say=quiet)
    vectors_corpus(tmp_path / "v.parquet")
    with pytest.raises(PrunekitError, match=r"step 1 \(perplexity-filter\) needs the column 'perplexity'.*add the "
                                            "perplexity step before it"):
        run_pipeline(tmp_path / "v.parquet", [ScoreFilter("perplexity", keep=0.5)], tmp_path / "o", say=quiet)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.work").exists()


@pytest.mark.parametrize(("step", "message"), [
    ("dedup-filter: {epsilon: abc}", r"step 1 \(dedup-filter\): epsilon='abc': input should be a valid number"),
    ("dedup-filter: {epsilon: 2}", r"step 1 \(dedup-filter\): epsilon=2.0 is outside \[0, 1\]"),
    ("quotas: {keep: 2}", r"step 1 \(quotas\): keep=2.0 is outside \(0, 1\]"),
    ("score-filter: {keep: '0.5x'}", r"keep='0.5x': input should be a valid number"),
    ("score-filter: {keep_from: top}", "keep_from='top': use lowest, highest or middle"),
    ("cluster: {clusters: three}", "clusters='three': input should be a valid integer"),
    ("cluster: {clusters: 2.5}", "clusters=2.5: input should be a valid integer"),
    ("cluster: {clusters: 0}", "clusters=0: use 1 or more"),
    ("embed: {batch_size: 0}", "batch_size=0: use 1 or more"),
    ("perplexity: {max_tokens: many}", "max_tokens='many': input should be a valid integer"),
    ("threshold-filter: {column: 5, minimum: 1}", "column=5: input should be a valid string"),
    ("dedup: {epsilon: abc}", r"step 1 \(dedup\): epsilon='abc'"),
    ("d4: {keep: 0}", r"step 1 \(d4\): keep=0.0 is outside"),
    ("d4: {k: 3}", r"step 1 \(d4\): k is not a setting of this preset; it takes epsilon, keep, clusters, seed"),
    ("dedupe: {}", "unknown corpus step 'dedupe'"),
    # Values the libraries underneath take as C ints: refused here rather than overflowing inside them.
    ("perplexity: {max_tokens: 18446744073709551616}", "max_tokens=18446744073709551616: use at most"),
    ("cluster: {seed: 2147483648}", "seed=2147483648: use 0 to"),
    ("cluster: {iterations: 100000000000000000000000}", "iterations=100000000000000000000000: use 1 to"),
    ("embed: {threads: 100000000000000000000000}", "threads=100000000000000000000000: use 1 to 1024"),
])
def test_defect9_recipe_settings_are_checked_with_their_types_and_ranges(tmp_path, step, message):
    recipe = tmp_path / "data.yaml"
    recipe.write_text(f"steps:\n  - {step}\n")
    with pytest.raises(PrunekitError, match=message) as caught:
        load_recipe(recipe)
    assert str(caught.value).startswith(f"recipe {recipe}: ") and "\n" not in str(caught.value)


def test_defect9_recipe_file_errors_are_one_line(tmp_path):
    recipe = tmp_path / "data.yaml"
    cases = [
        (b"steps:\n  - embed\n", "steps: step 1: input should be a valid dictionary"),
        (b"executor: spark\nsteps:\n  - embed: {}\n", "executor: input should be 'local' or 'ray'"),
        (b"text_column: 5\nsteps:\n  - embed: {}\n", "text_column: input should be a valid string"),
        ("steps:\n  - embed: {model: caf\xe9}\n".encode("latin-1"), r"not UTF-8 text \(byte 0xe9\)"),
        (b"steps: [\n", "is not valid YAML"),
        (b"- embed: {}\n", "expected a mapping"),
        (b"steps: []\n", "the recipe has no steps"),
    ]
    for data, message in cases:
        recipe.write_bytes(data)
        with pytest.raises(PrunekitError, match=message) as caught:
            load_recipe(recipe)
        assert "\n" not in str(caught.value)
    with pytest.raises(PrunekitError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(PrunekitError, match="is a directory"):
        load_recipe(tmp_path)


# --- defect 11: ragged embeddings -------------------------------------------------------------------------------


def test_defect11_ragged_embeddings_are_refused_not_reshaped(tmp_path):
    # Half the rows 8-dim, half 16-dim: 12 values per row on average, which a reshape used to accept.
    rows = [{"id": f"doc-{i}", "text": f"t{i}", "embedding": [1.0 + i] * (8 if i % 2 == 0 else 16)}
            for i in range(10)]
    jsonl(tmp_path / "ragged.jsonl", rows)
    before = tree(tmp_path)
    with pytest.raises(PrunekitError, match="row id 'doc-1' has 16 values, earlier rows 8") as caught:
        run_pipeline(tmp_path / "ragged.jsonl", dedup_steps(clusters=2), tmp_path / "out", say=quiet)
    assert "'embedding'" in str(caught.value) and "\n" not in str(caught.value)
    assert_nothing_written(tmp_path, before, tmp_path / "out")
    # The step helper refuses them too (embeddings_of never reshapes rows of different lengths).
    batch = pa.RecordBatch.from_pylist([{"id": "a", "embedding": [0.0] * 8}, {"id": "b", "embedding": [0.0] * 16}])
    with pytest.raises(PrunekitError, match="row id 'b' has 16 values, earlier rows 8"):
        embeddings_of(batch)
    assert embeddings_of(batch.slice(0, 1)).shape == (1, 8)


def test_defect11_a_later_batch_of_another_length_is_refused(tmp_path):
    source = tmp_path / "parts"
    source.mkdir()
    vectors_corpus(source / "a.parquet", dim=8)
    vectors_corpus(source / "b.parquet", dim=16)
    with pytest.raises(PrunekitError, match="row id 66 has 16 values, earlier rows 8"):
        run_pipeline(source, dedup_steps(clusters=2), tmp_path / "out", say=quiet)
    assert not (tmp_path / "out.work").exists()


# --- defect 14: the input's own ids --------------------------------------------------------------------------------


def test_defect14_a_unique_id_field_is_the_id_column_by_default(tmp_path):
    ids = [f"doc-{i:03d}" for i in range(66)]
    source = vectors_corpus(tmp_path / "in.parquet", ids=ids)
    messages = []
    result = run_pipeline(source, dedup_steps(epsilon=0.01, clusters=2), tmp_path / "out", say=messages.append)
    kept = pq.read_table(tmp_path / "out" / "kept.parquet")
    excluded = pq.read_table(tmp_path / "out" / "excluded.parquet")
    assert excluded.num_rows == 6 and result.kept == 60
    assert set(kept.column("id").to_pylist()) | set(excluded.column("id").to_pylist()) == set(ids)
    assert "source_id" not in kept.column_names
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["id_column"] == "id (found in the input)"
    assert any("'id'" in m and "unique" in m for m in messages)
    # An explicit --id-column still wins, and says nothing about the default.
    messages.clear()
    run_pipeline(source, dedup_steps(epsilon=0.01, clusters=2), tmp_path / "again", id_column="id",
                 say=messages.append)
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["id_column"] == "id"
    assert not any(m.startswith("ids:") for m in messages)


def test_defect14_a_repeated_id_field_is_kept_under_another_name(tmp_path):
    ids = [f"doc-{i % 10}" for i in range(66)]  # not unique: row numbers are the ids
    source = vectors_corpus(tmp_path / "in.parquet", ids=ids, extra={"source_id": ["taken"] * 66})
    messages = []
    run_pipeline(source, dedup_steps(epsilon=0.01, clusters=2), tmp_path / "out", say=messages.append)
    kept = pq.read_table(tmp_path / "out" / "kept.parquet").to_pylist()
    excluded = pq.read_table(tmp_path / "out" / "excluded.parquet")
    assert {r["id"] for r in kept} | set(excluded.column("id").to_pylist()) == set(range(66))
    assert all(r["source_id_2"] == ids[r["id"]] and r["source_id"] == "taken" for r in kept)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["id_column"].startswith("row numbers") and "'source_id_2'" in summary["id_column"]
    assert any("kept as 'source_id_2'" in m for m in messages)


def test_defect14_fields_named_id_or_text_are_never_dropped(tmp_path):
    rows = [{"doc": f"d{i}", "body": f"body {i}", "text": f"title {i}", "id": i % 2} for i in range(5)]
    jsonl(tmp_path / "a.jsonl", rows)
    table = pa.Table.from_batches(list(read_corpus(tmp_path / "a.jsonl", "body", "doc")))
    assert table.column_names == ["id", "text", "source_text", "source_id"]
    assert table.column("source_text").to_pylist()[3] == "title 3" and table.column("source_id").to_pylist()[3] == 1


# --- defect 7: killed runs ---------------------------------------------------------------------------------------


KILLED_RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from prunekit.corpus.pipeline import run_pipeline
    from prunekit.corpus.recipe import dedup_steps
    from prunekit.corpus.select import DuplicateFilter

    def stuck(self, batches):
        for batch in batches:
            Path(sys.argv[3]).write_text("running")
            time.sleep(120)
            yield batch

    DuplicateFilter.run = stuck
    run_pipeline(sys.argv[1], dedup_steps(clusters=2), Path(sys.argv[2]), say=lambda _: None)
""")


def _kill_during_a_step(tmp_path, source, out):
    flag = tmp_path / "flag"
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(source), str(out), str(flag)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 240
        while not flag.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before the step"
            time.sleep(0.2)
        time.sleep(0.5)  # well inside the stuck step
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    flag.unlink()
    return process.pid


def test_defect7_kill_9_leaves_nothing_that_looks_finished_and_a_rerun_cleans_up(tmp_path):
    source = vectors_corpus(tmp_path / "in.parquet")
    out = tmp_path / "out"
    work = tmp_path / "out.work"
    pid = _kill_during_a_step(tmp_path, source, out)
    assert not out.exists()
    hidden = [p for p in work.iterdir() if p.name.startswith(".") and p.name != ".prunekit-work"]
    assert [p.name.split(f"-{pid}-")[0] for p in hidden] == [".03-dedup-filter.partial"]
    assert (hidden[0] / INCOMPLETE).exists() and not (hidden[0] / "COMPLETE").exists()
    finished = sorted(p.name for p in work.iterdir() if (p / "COMPLETE").exists())
    assert finished == ["00-read", "01-cluster", "02-semdedup"]
    # Leftovers of older runs too: a partial without a process id, one of another (dead) process and step.
    (work / ".05-quotas.partial").mkdir()
    (work / f".04-cluster.partial-{pid}-0123abcd").mkdir()
    (work / f".01-cluster.old-{pid}-89abcdef").mkdir()
    messages = []
    result = run_pipeline(source, dedup_steps(clusters=2), out, say=messages.append)
    assert result.rows == 66 and (out / "kept.parquet").exists()
    assert sum("done earlier" in m for m in messages) == 2  # the finished steps were reused
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == [".prunekit-work"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "out", "out.work"]


def test_defect7_a_live_runs_partial_folder_is_left_alone(tmp_path):
    source = vectors_corpus(tmp_path / "in.parquet")
    run_pipeline(source, dedup_steps(clusters=2), tmp_path / "out", say=quiet)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / "out.work" / f".03-dedup-filter.partial-{sleeper.pid}-0123abcd"
        live.mkdir()
        run_pipeline(source, dedup_steps(epsilon=0.3, clusters=2), tmp_path / "out", overwrite=True, say=quiet)
        assert live.exists()  # another process is writing it
    finally:
        sleeper.kill()
        sleeper.wait()


def test_defect7_a_step_folder_gets_its_marker_only_once_complete(tmp_path, monkeypatch):
    """Killed between moving a finished step into place and marking it: the folder has no COMPLETE marker, so the
    rerun computes that step again instead of trusting it."""
    import prunekit.corpus.pipeline as pipeline

    source = vectors_corpus(tmp_path / "in.parquet")
    real = pipeline.os.replace

    def killed_at_the_marker(a, b):
        if Path(b).name == "COMPLETE" and Path(b).parent.name == "01-cluster":
            raise KeyboardInterrupt
        real(a, b)

    monkeypatch.setattr(pipeline.os, "replace", killed_at_the_marker)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(source, dedup_steps(clusters=2), tmp_path / "out", say=quiet)
    work = tmp_path / "out.work"
    assert (work / "01-cluster" / "kept").is_dir() and not (work / "01-cluster" / "COMPLETE").exists()
    assert not any((p / "COMPLETE").exists() for p in work.iterdir() if p.name.startswith("."))
    monkeypatch.setattr(pipeline.os, "replace", real)
    messages = []
    run_pipeline(source, dedup_steps(clusters=2), tmp_path / "out", say=messages.append)
    assert not any(m.startswith("cluster: done earlier") for m in messages)
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == [".prunekit-work"]
