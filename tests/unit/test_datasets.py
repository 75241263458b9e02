"""expertrag.datasets: the one home of the shared data loaders (training, evaluation and the
benchmarks read through it); the old import paths give the same objects."""

from __future__ import annotations

import json

import pytest

from expertrag import datasets


def test_old_paths_are_the_same_loaders():
    from expertrag.evaluation import datasets as eval_sets
    from expertrag.training import data

    for name in ("data_dir", "load_hotpot", "load_squad", "load_msmarco", "load_halueval",
                 "DataError", "DataNotFoundError", "DataRowError", "HOTPOT_TRAIN",
                 "DEFAULT_DATA_DIR", "MsMarco"):
        assert getattr(data, name) is getattr(datasets, name)
    for name in ("load_musique", "load_hotpot_test", "MUSIQUE_QUESTIONS", "HOTPOT_TEST"):
        assert getattr(eval_sets, name) is getattr(datasets, name)


def test_loaders_read_and_refuse(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert datasets.read_jsonl(rows) == [{"a": 1}, {"a": 2}]
    assert datasets.load_hotpot_test(rows) == [{"a": 1}, {"a": 2}]
    rows.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(datasets.DataRowError, match="row 1"):
        datasets.read_jsonl(rows)
    with pytest.raises(datasets.DataError, match="held-out"):
        datasets.load_hotpot(tmp_path / "test.jsonl")
    with pytest.raises(datasets.DataNotFoundError):
        datasets.load_musique(tmp_path / "missing.json")
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps([{"title": "t", "text": "x"}]))
    assert datasets.load_musique_corpus(corpus) == [{"title": "t", "text": "x"}]
    corpus.write_text("{}")
    with pytest.raises(datasets.DataError, match="corpus"):
        datasets.load_musique_corpus(corpus)
    docs = datasets.paragraph_documents([("T", "text")])
    assert docs[0].id == "T" and docs[0].metadata == {"title": "T"}
    assert datasets.item_rng(1, "a").random() == datasets.item_rng(1, "a").random()
