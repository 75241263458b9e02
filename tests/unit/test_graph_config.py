"""GraphConfig split into index and query settings: old flat callers keep working, each
part saves and loads, a retriever over a built graph passes its own search settings, and
both framework skins take a config as the object, a dict or a path."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("ladybug")

from test_graph import DOCS, CapsExtractor, HashEmbedder, graph_at

from expertrag.errors import ConfigKeyError, InputError
from expertrag.graph import GraphConfig, GraphIndexConfig, GraphQueryConfig, GraphRAG
from expertrag.graph.pipeline import GraphRetrieverAdapter, open_graph

QUESTION = "Tell me about Ada Lovelace"


def test_flat_names_still_build_read_and_write_the_parts():
    cfg = GraphConfig(extraction="llm", hops=2, synonym_threshold=0.8)
    assert cfg.index == GraphIndexConfig(extraction="llm", synonym_threshold=0.8)
    assert cfg.query == GraphQueryConfig(hops=2)
    assert cfg.hops == 2 and cfg.extraction == "llm" and cfg.damping == 0.5
    cfg.damping = 0.7
    assert cfg.query.damping == 0.7
    assert dataclasses.replace(cfg, hops=3).query.hops == 3 and cfg.hops == 2
    assert GraphConfig(index={"chunk_size": 200}, link_top=2).index.chunk_size == 200
    assert set(cfg.flat()) == GraphConfig.config_keys() - {"index", "query"}
    with pytest.raises(ConfigKeyError, match="colour"):
        GraphConfig(colour="red")
    with pytest.raises(AttributeError):
        _ = cfg.colour


def test_graph_configs_round_trip_nested_and_flat(tmp_path):
    cfg = GraphConfig(GraphIndexConfig(chunk_size=300), GraphQueryConfig(hops=0))
    assert cfg.to_dict() == {"index": cfg.index.to_dict(), "query": cfg.query.to_dict()}
    assert GraphConfig.from_dict(cfg.to_dict()) == cfg
    assert GraphConfig.from_dict({"chunk_size": 300, "hops": 0}) == cfg
    assert GraphConfig.load(cfg.save(tmp_path / "graph.json")) == cfg
    for part in (cfg.index, cfg.query):
        assert type(part).load(part.save(tmp_path / "part.json")) == part
    with pytest.raises(ConfigKeyError):
        GraphConfig.from_dict({"query": {"hop": 1}})
    with pytest.raises(InputError, match="damping"):
        GraphConfig.from_dict({"query": {"damping": 1.0}})
    with pytest.raises(InputError, match="extraction"):
        GraphConfig.from_dict({"extraction": "magic"})


def test_a_graph_takes_its_config_as_object_dict_or_path(tmp_path):
    path = GraphConfig(hops=0, chunk_size=500).save(tmp_path / "cfg.json")
    for i, config in enumerate((GraphConfig(hops=0, chunk_size=500),
                                {"hops": 0, "chunk_size": 500}, str(path), path)):
        g = GraphRAG(tmp_path / f"g{i}", embedder=HashEmbedder(), config=config)
        assert g.config.hops == 0 and g.config.index.chunk_size == 500
        assert g.stats()["config"]["hops"] == 0  # the flat shape, as before
        g.close()


def test_searches_take_their_own_query_settings(tmp_path):
    g = graph_at(tmp_path / "g")
    g.insert(DOCS, progress=False)
    wide = g.retrieve(QUESTION, k=4, mode="local")
    narrow = g.retrieve(QUESTION, k=4, mode="local", settings={"hops": 0})
    assert g.retrieve(QUESTION, k=4, mode="local",
                      settings=GraphQueryConfig(hops=0)) == narrow
    assert len(narrow) < len(wide) and narrow[0].id == wide[0].id == "ada#0"
    assert g.config.hops == 1  # the graph's own settings are untouched
    with pytest.raises(InputError, match="other index settings"):
        g.retrieve(QUESTION, settings=GraphConfig(chunk_size=99))
    with pytest.raises(ConfigKeyError):
        g.retrieve(QUESTION, settings={"hopz": 0})
    adapter = GraphRetrieverAdapter(g, "local", config={"hops": 0})
    assert adapter.retrieve(QUESTION, 4) == narrow
    same, settings = open_graph(g, config=None)
    assert same is g and settings is None
    g.close()


def test_both_skins_pass_the_config(tmp_path):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import QueryBundle

    from expertrag.langchain.graph import ExpertGraphRetriever
    from expertrag.llama_index.graph import ExpertGraphRetriever as LIGraphRetriever

    g = graph_at(tmp_path / "g")
    g.insert(DOCS, progress=False)
    narrow = [d.id for d in g.retrieve(QUESTION, k=4, mode="local", settings={"hops": 0})]
    saved = GraphConfig(hops=0).save(tmp_path / "q.json")
    for config in (GraphConfig(hops=0), {"hops": 0}, str(saved)):
        lc = ExpertGraphRetriever(graph=g, k=4, mode="local", config=config)
        assert [d.id for d in lc.invoke(QUESTION)] == narrow
        li = LIGraphRetriever(graph=g, k=4, mode="local", config=config)
        assert [n.node.node_id for n in li.retrieve(QUESTION)] == narrow
        assert [n.node.node_id for n in li.retrieve(QueryBundle(QUESTION))] == narrow
    g.close()
    # a config also builds the graph a skin makes from documents
    built = LIGraphRetriever(documents=[d.text for d in DOCS], path=str(tmp_path / "li"),
                             embedder=HashEmbedder(), config={"chunk_size": 400, "hops": 2})
    assert built.graph.config.index.chunk_size == 400 and built.graph.config.hops == 2
    built.graph.close()
    lc = ExpertGraphRetriever(documents=[], path=str(tmp_path / "lc"), embedder=HashEmbedder(),
                              config=GraphConfig(hops=2))
    assert lc.core.config.hops == 2
    lc.core.close()
    other = graph_at(tmp_path / "g2")
    with pytest.raises(InputError, match="other index settings"):
        LIGraphRetriever(graph=other, config=GraphConfig(chunk_size=99))
    other.close()


def test_the_linker_a_test_plants_is_used(tmp_path):
    """Searches read the graph's linker when they run, so one set after construction
    (as the tests do) is the one used."""
    g = GraphRAG(tmp_path / "g", embedder=HashEmbedder())
    g.extractor = g._linker = CapsExtractor()
    g.insert(DOCS, progress=False)
    assert g.retrieve("Who worked with Charles Babbage?", k=1)[0].id == "ada#0"
    g.close()
