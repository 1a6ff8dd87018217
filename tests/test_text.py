import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from prunekit.errors import PrunekitError
from prunekit.text.sources import evaluation_article, load_texts
from prunekit.text.tokens import calibration_windows, evaluation_windows, token_stream


def test_text_file_jsonl_parquet_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("plain text file")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "first"}) + "\n" + json.dumps({"text": "second"}) + "\n")
    pq.write_table(pa.table({"content": ["from parquet"]}), tmp_path / "c.parquet")
    assert load_texts(str(tmp_path / "a.txt"), "calibration") == ["plain text file"]
    assert load_texts(str(tmp_path / "b.jsonl"), "calibration") == ["first", "second"]
    assert load_texts(str(tmp_path / "c.parquet"), "calibration", "content") == ["from parquet"]
    (tmp_path / "c.parquet").unlink()
    assert load_texts(str(tmp_path), "calibration") == ["plain text file", "first", "second"]


def test_missing_column_names_the_available_ones(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(PrunekitError, match="no field 'text'.*body"):
        load_texts(str(path), "calibration")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "e.parquet")
    with pytest.raises(PrunekitError, match="no column 'text'.*body"):
        load_texts(str(tmp_path / "e.parquet"), "calibration")


def test_missing_or_empty_sources(tmp_path):
    with pytest.raises(PrunekitError, match="not found"):
        load_texts(str(tmp_path / "nope.txt"), "calibration")
    (tmp_path / "empty.txt").write_text("   ")
    with pytest.raises(PrunekitError, match="holds no text"):
        load_texts(str(tmp_path / "empty.txt"), "calibration")


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b", "c d"]}),
                          "test": datasets.Dataset.from_dict({"text": ["e f"]})}).save_to_disk(tmp_path / "ds")
    assert load_texts(f"hf:{tmp_path / 'ds'}", "calibration") == ["a b", "c d"]
    assert load_texts(f"hf:{tmp_path / 'ds'}", "evaluation") == ["e f"]
    assert load_texts(f"hf:{tmp_path / 'ds'}@test", "calibration") == ["e f"]


def test_calibration_windows_are_seeded_distinct_and_checked():
    stream = torch.arange(1000)
    a = calibration_windows(stream, 8, 50, seed=0)
    assert torch.equal(a, calibration_windows(stream, 8, 50, seed=0))
    assert not torch.equal(a, calibration_windows(stream, 8, 50, seed=1))
    assert a.shape == (8, 50) and len(set(a[:, 0].tolist())) == 8
    assert (a[:, 0] % 50 == 0).all()  # aligned, hence non-overlapping
    with pytest.raises(PrunekitError, match="fewer than the 30 x 50"):
        calibration_windows(stream, 30, 50, seed=0)


def test_evaluation_windows_spread_over_the_stream():
    windows = evaluation_windows(torch.arange(1000), 3, 100)
    assert windows[:, 0].tolist() == [0, 400, 900]
    with pytest.raises(PrunekitError, match="evaluation text"):
        evaluation_windows(torch.arange(100), 2, 100)


def test_token_stream_separates_documents_with_eos(tokenizer):
    stream = token_stream(tokenizer, ["the river", "old stone"])
    assert stream.tolist().count(tokenizer.eos_token_id) == 2


def test_article_split_is_stable_and_roughly_one_in_ten():
    articles = [f"Article number {i} is here.\nBody." for i in range(2000)]
    held_out = [a for a in articles if evaluation_article(a)]
    assert 120 < len(held_out) < 280
    assert held_out == [a for a in articles if evaluation_article(a)]
