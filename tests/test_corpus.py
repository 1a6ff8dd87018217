"""Text corpus pruning: the pure math on hand-computed cases, the steps, the pipeline (resume, exclusion log, bad
input) and the local and Ray executors agreeing."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_cli import assert_one_line_error, run_cli

from prunekit.corpus.cluster import ClusterStep, assign, fit_centroids
from prunekit.corpus.io import read_corpus
from prunekit.corpus.perplexity import text_perplexities
from prunekit.corpus.pipeline import run_pipeline
from prunekit.corpus.quotas import ComplexityQuotaStep, cluster_complexity, quota_budgets
from prunekit.corpus.recipe import build_step, d4_steps, dedup_steps
from prunekit.corpus.select import DuplicateFilter, ScoreFilter
from prunekit.corpus.semdedup import earlier_similarity
from prunekit.corpus.step import embedding_array
from prunekit.errors import PrunekitError


def planted_corpus(path, n=600, copies=60, dim=32, seed=0):
    """n random unit-ish vectors in 6 loose groups plus `copies` near-copies (ids n..n+copies-1) of random ones."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, dim))
    base = centres[rng.integers(0, 6, n)] + 0.8 * rng.normal(size=(n, dim))
    sources = rng.choice(n, copies, replace=False)
    vectors = np.concatenate([base, base[sources] + 0.003 * rng.normal(size=(copies, dim))]).astype(np.float32)
    table = pa.table({"text": [f"document {i}" for i in range(len(vectors))], "embedding": embedding_array(vectors)})
    pq.write_table(table, path)
    return {n + i: int(s) for i, s in enumerate(sources)}


def test_earlier_similarity_by_hand():
    vectors = np.array([[1, 0], [1, 0.01], [0, 1], [0.7, 0.7]], dtype=np.float32)
    best, which = earlier_similarity(vectors, chunk=2)  # a chunk boundary inside the rows
    assert np.isnan(best[0]) and which.tolist() == [-1, 0, 1, 1]
    expected = [1 / np.sqrt(1 + 1e-4), 0.01 / np.sqrt(1 + 1e-4), (0.7 + 0.007) / (np.sqrt(1 + 1e-4) * np.sqrt(0.98))]
    assert np.allclose(best[1:], expected, atol=1e-6)


def test_quota_budgets_sum_to_the_target_and_respect_sizes():
    sizes = np.array([10, 100, 5, 50])
    budgets = quota_budgets(sizes, np.array([0.1, 0.2, 0.6, 0.1]), target=60)
    # Clusters 2 and 0 fill up (5 and 10 rows); the other two share the remaining 45 as 0.2 : 0.1.
    assert budgets.tolist() == [10, 30, 5, 15]
    budgets = quota_budgets(sizes, np.array([1.0, 1.0, 1.0, 1.0]), target=31)
    assert budgets.tolist() == [9, 9, 5, 8]  # 26 / 3 each, the 2 rows rounding left go to the lowest indices
    assert quota_budgets(sizes, np.ones(4), target=int(sizes.sum())).tolist() == sizes.tolist()
    with pytest.raises(PrunekitError, match="outside"):
        quota_budgets(sizes, np.ones(4), target=500)


def test_cluster_complexity_by_hand():
    centroids = np.array([[1, 0], [0, 1], [-1, 0]], dtype=np.float64)
    complexity = cluster_complexity(centroids, np.array([0.1, 0.2, 0.3]), neighbors=1)
    # Nearest other centroid: 1 - cos(90 deg) = 1 for every cluster.
    assert np.allclose(complexity, [0.1, 0.2, 0.3])
    complexity = cluster_complexity(centroids, np.array([0.1, 0.2, 0.3]), neighbors=2)
    assert np.allclose(complexity, [0.1 * 1.5, 0.2 * 1.0, 0.3 * 1.5])  # (1 + 2) / 2 for the two opposite ones


def test_kmeans_finds_separated_groups():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 16) * 5
    vectors = (centres[np.repeat(np.arange(4), 50)] + 0.1 * rng.normal(size=(200, 16))).astype(np.float32)
    labels, distance = assign(vectors, fit_centroids(vectors, 4, seed=0))
    assert len(set(labels.tolist())) == 4
    assert all(len(set(labels[i * 50 : (i + 1) * 50].tolist())) == 1 for i in range(4))
    assert (distance < 0.01).all()
    with pytest.raises(PrunekitError, match="clusters"):
        fit_centroids(vectors[:3], 4)


def test_score_filter_keeps_an_exact_fraction_with_ties_broken_by_id():
    batch = pa.RecordBatch.from_pydict({"id": [5, 1, 3, 2, 4, 0], "ppl": [2.0, 1.0, 2.0, 9.0, None, 2.0]})
    for keep_from, kept in [("lowest", {1, 0}), ("highest", {2, 5}), ("middle", {0, 3})]:
        step = ScoreFilter("ppl", keep=0.4, keep_from=keep_from)  # 0.4 x 5 scored rows = 2
        step.fit([batch])
        out = next(step.run([batch]))
        reasons = dict(zip(out.column("id").to_pylist(), out.column("drop_reason").to_pylist(), strict=True))
        assert {i for i, r in reasons.items() if r is None} == kept, keep_from
        assert reasons[4] == "ppl-missing"
    with pytest.raises(PrunekitError, match=r"\(0, 1\]"):
        ScoreFilter("ppl", keep=0)
    with pytest.raises(PrunekitError, match=r"\[0, 1\]"):
        DuplicateFilter(epsilon=1.5)


def test_text_perplexity_matches_a_direct_computation(tokenizer):
    import torch
    from conftest import make_text, tiny_model

    model = tiny_model("llama").eval()
    texts = [make_text(30, seed=1), make_text(7, seed=2), "", make_text(12, seed=3)]
    values = text_perplexities(model, tokenizer, texts, max_tokens=64, batch_tokens=64)
    assert np.isnan(values[2])  # nothing to score
    ids = [tokenizer.eos_token_id, *tokenizer(texts[1])["input_ids"]]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    direct = torch.exp(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]))).item()
    assert values[1] == pytest.approx(direct, rel=1e-4)
    alone = text_perplexities(model, tokenizer, texts[3:], max_tokens=64)
    assert alone[0] == pytest.approx(values[3], rel=1e-4)  # batching and padding do not change a score


def test_dedup_pipeline_finds_planted_copies_and_resumes(tmp_path):
    copies = planted_corpus(tmp_path / "in.parquet")
    out = tmp_path / "out"
    messages = []
    result = run_pipeline(tmp_path / "in.parquet", dedup_steps(epsilon=0.02, clusters=6), out, say=messages.append)
    excluded = pq.read_table(out / "excluded.parquet").to_pylist()
    dropped = {r["id"] for r in excluded}
    kept = set(pq.read_table(out / "kept.parquet").column("id").to_pylist())
    assert result.kept == len(kept) == 600 and dropped.isdisjoint(kept)
    # One of every planted pair goes (either member can be the one kept), nothing else does.
    assert all((copy in dropped) != (source in dropped) for copy, source in copies.items())
    assert len(dropped) == len(copies)
    assert {r["reason"] for r in excluded} == {"duplicate"} and all(r["score"] > 0.98 for r in excluded)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept"] == 600 and summary["dropped"] == {"duplicate": 60}
    assert "embedding" not in pq.read_schema(out / "kept.parquet").names
    # Another epsilon reuses the clustering and the similarities: only the filter runs again.
    messages.clear()
    loose = run_pipeline(tmp_path / "in.parquet", dedup_steps(epsilon=0.3, clusters=6), out, overwrite=True,
                         say=messages.append)
    assert sum("done earlier" in m for m in messages) == 2 and loose.kept < 600


def test_interrupted_step_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    planted_corpus(tmp_path / "in.parquet", n=100, copies=5)

    def broken(self, batches):
        raise KeyboardInterrupt

    monkeypatch.setattr(DuplicateFilter, "run", broken)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(tmp_path / "in.parquet", dedup_steps(clusters=3), tmp_path / "out", say=lambda _: None)
    work = tmp_path / "out.work"
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in work.iterdir() if (p / "COMPLETE").exists()) == ["00-read", "01-cluster",
                                                                                   "02-semdedup"]
    assert not (work / "03-dedup-filter").exists()


def test_quotas_and_d4_keep_the_requested_share(tmp_path):
    planted_corpus(tmp_path / "in.parquet", n=400, copies=40)
    result = run_pipeline(tmp_path / "in.parquet", [ClusterStep(clusters=5), ComplexityQuotaStep(keep=0.5)],
                          tmp_path / "quotas", say=lambda _: None)
    assert result.kept == 220 and result.dropped == {"cluster-quota": 220}
    result = run_pipeline(tmp_path / "in.parquet", d4_steps(epsilon=0.02, keep=0.5, clusters=5), tmp_path / "d4",
                          say=lambda _: None)
    assert result.dropped == {"duplicate": 40, "centroid_distance-filter": 200} and result.kept == 200


def test_local_and_ray_executors_keep_the_same_ids(tmp_path):
    pytest.importorskip("ray")
    planted_corpus(tmp_path / "in.parquet", n=300, copies=30)
    steps = lambda: [*dedup_steps(epsilon=0.05, clusters=4), ComplexityQuotaStep(keep=0.6)]  # noqa: E731
    kept = {}
    for executor in ("local", "ray"):
        run_pipeline(tmp_path / "in.parquet", steps(), tmp_path / executor, executor=executor, say=lambda _: None)
        kept[executor] = sorted(pq.read_table(tmp_path / executor / "kept.parquet").column("id").to_pylist())
    assert kept["local"] == kept["ray"] and len(kept["local"]) == round(0.6 * 300)


def test_bad_corpus_input_gets_one_line_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": "x", "body": "hi"}\n')
    with pytest.raises(PrunekitError, match="no text column 'text'.*body"):
        list(read_corpus(tmp_path / "a.jsonl"))
    (tmp_path / "b.jsonl").write_text('{"id": "x", "text": "a"}\n{"id": "x", "text": "b"}\n')
    with pytest.raises(PrunekitError, match="'x' appears more than once"):
        list(read_corpus(tmp_path / "b.jsonl", id_column="id"))
    (tmp_path / "c.jsonl").write_text("")
    with pytest.raises(PrunekitError, match="empty"):
        list(read_corpus(tmp_path / "c.jsonl"))
    with pytest.raises(PrunekitError, match="not found"):
        list(read_corpus(tmp_path / "missing.jsonl"))
    with pytest.raises(PrunekitError, match="unknown corpus step 'dedupe'"):
        build_step("dedupe", {})
    with pytest.raises(PrunekitError, match="bogus is not a setting"):
        build_step("cluster", {"bogus": 1})
    planted_corpus(tmp_path / "small.parquet", n=5, copies=1)
    with pytest.raises(PrunekitError, match="50 clusters for 6 rows"):
        run_pipeline(tmp_path / "small.parquet", dedup_steps(clusters=50), tmp_path / "o", say=lambda _: None)
    assert not (tmp_path / "o").exists()
    with pytest.raises(PrunekitError, match="unreachable"):
        run_pipeline(tmp_path / "small.parquet", dedup_steps(clusters=2), tmp_path / "r", executor="ray",
                     ray_address="127.0.0.1:1", say=lambda _: None)


def test_corpus_commands(tmp_path, capsys, monkeypatch, tiny_model_dir):
    planted_corpus(tmp_path / "in.parquet", n=200, copies=20)
    code, stdout, err = run_cli(["data", "dedup", str(tmp_path / "in.parquet"), "--embedding-column", "embedding",
                                 "--clusters", "3", "--epsilon", "0.02", "--format", "jsonl", "--out",
                                 str(tmp_path / "dedup")], capsys, monkeypatch)
    assert code == 0, err
    assert len((tmp_path / "dedup" / "kept.jsonl").read_text().splitlines()) == 200 and "20 duplicate" in stdout
    code, _, err = run_cli(["data", "dedup", str(tmp_path / "in.parquet"), "--epsilon", "2", "--out",
                            str(tmp_path / "bad")], capsys, monkeypatch)
    assert code == 2 and "epsilon=2" in err
    assert_one_line_error(err)
    corpus = tmp_path / "text.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["a b c d", "the of and", "x", "a the b"]))
    recipe = tmp_path / "data.yaml"
    recipe.write_text(f"input: {corpus}\nsteps:\n  - perplexity: {{model: {tiny_model_dir}, max_tokens: 16}}\n"
                      "  - score-filter: {column: perplexity, keep: 0.5}\n")
    code, stdout, err = run_cli(["data", "prune", "--recipe", str(recipe), "--out", str(tmp_path / "ppl")], capsys,
                                monkeypatch)
    assert code == 0, err
    kept = pq.read_table(tmp_path / "ppl" / "kept.parquet")
    assert kept.num_rows == 2 and "perplexity" in kept.column_names
    recipe.write_text("steps:\n  - cluster: {k: 3}\n")
    code, _, err = run_cli(["data", "prune", str(corpus), "--recipe", str(recipe), "--out", str(tmp_path / "x")],
                           capsys, monkeypatch)
    assert code == 2 and "k is not a setting of this step" in err


def test_a_step_that_drops_every_row_leaves_an_empty_output(tmp_path):
    from prunekit.corpus.select import ThresholdFilter

    planted_corpus(tmp_path / "in.parquet", n=50, copies=5)
    steps = [ClusterStep(clusters=2), ThresholdFilter("centroid_distance", maximum=-1.0), ComplexityQuotaStep(0.5)]
    result = run_pipeline(tmp_path / "in.parquet", steps, tmp_path / "out", say=lambda _: None)
    assert result.kept == 0 and result.dropped == {"centroid_distance-threshold": 55}
    assert pq.read_table(tmp_path / "out" / "kept.parquet").num_rows == 0


def test_reads_jsonl_parquet_and_saved_hf_datasets_with_the_same_ids(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"doc": f"d{i}", "body": f"text number {i}", "lang": "en"} for i in range(7)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for source in ("a.jsonl", "a.parquet", "saved"):
        table = pa.Table.from_batches(list(read_corpus(tmp_path / source, "body", "doc", batch_size=3)))
        assert table.column_names == ["id", "text", "lang"], source
        assert table.column("id").to_pylist() == [f"d{i}" for i in range(7)]
        assert table.column("text").to_pylist()[2] == "text number 2"
    numbered = pa.Table.from_batches(list(read_corpus(tmp_path / "a.jsonl", "body", batch_size=3)))
    assert numbered.column("id").to_pylist() == list(range(7))  # row numbers across batches


def test_perplexity_batches_stay_within_the_token_budget(tokenizer):
    from conftest import make_text, tiny_model

    model = tiny_model("llama").eval()
    shapes = []
    model.register_forward_hook(lambda module, args, kwargs, out: shapes.append(tuple(kwargs["input_ids"].shape)),
                                with_kwargs=True)
    texts = [make_text(3, seed=i) for i in range(40)] + [make_text(60, seed=100 + i) for i in range(3)]
    values = text_perplexities(model, tokenizer, texts, max_tokens=64, batch_tokens=128)
    assert all(rows * length <= 128 for rows, length in shapes) and sum(r for r, _ in shapes) == len(texts)
    assert np.isfinite(values).all()


def test_jsonl_fields_get_one_schema_for_the_whole_file(tmp_path):
    rows = [{"text": "a"}, {"text": "b", "score": 1}, {"text": "c", "score": 2.5}, {"text": "d", "score": None}]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = pa.Table.from_batches(list(read_corpus(tmp_path / "mixed.jsonl", batch_size=2)))
    assert table.column("score").to_pylist() == [None, 1.0, 2.5, None]
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "x": 1}\n{"text": "b", "x": "one"}\n')
    with pytest.raises(PrunekitError, match="incompatible types"):
        list(read_corpus(tmp_path / "bad.jsonl"))
