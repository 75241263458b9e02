"""The one config mixin: every config dataclass round-trips through a dict and a file,
refuses unknown keys with a typed error, and is accepted as the object, a dict or a path."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from expertrag.config import ConfigMixin, as_config
from expertrag.errors import ConfigKeyError, InputError


def configs() -> list[ConfigMixin]:
    from expertrag.chains.corrective import CRAGConfig
    from expertrag.chains.self_reflective import SelfRAGConfig
    from expertrag.graph.config import GraphConfig, GraphIndexConfig, GraphQueryConfig
    from expertrag.training.config import TrainConfig

    return [CRAGConfig(upper=0.7, lower=0.1), SelfRAGConfig(k=3, mode="long"),
            TrainConfig(method="dora", target_modules="all-linear", max_steps=5),
            GraphIndexConfig(chunk_size=300), GraphQueryConfig(hops=2),
            GraphConfig(extraction="llm", damping=0.6)]


@pytest.mark.parametrize("cfg", configs(), ids=lambda c: type(c).__name__)
def test_every_config_round_trips_and_refuses_unknown_keys(cfg, tmp_path):
    cls = type(cfg)
    assert cls.from_dict(cfg.to_dict()) == cfg
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()  # JSON-ready
    path = cfg.save(tmp_path / "sub" / "cfg.json")
    assert cls.load(path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["cfg.json"]  # no temporary left
    with pytest.raises(ConfigKeyError, match="unknown") as info:
        cls.from_dict({**cfg.to_dict(), "colour": "red", "size": 1})
    assert info.value.keys == ["colour", "size"] and isinstance(info.value, InputError)
    assert as_config(cls, cfg) is cfg
    assert as_config(cls, cfg.to_dict()) == cfg
    assert as_config(cls, str(path)) == cfg and as_config(cls, path) == cfg
    assert as_config(cls, None) == cls()


def test_from_dict_validates_and_load_names_bad_files(tmp_path):
    from expertrag.chains.corrective import CRAGConfig

    with pytest.raises(InputError, match="lower <= upper"):
        CRAGConfig.from_dict({"upper": 0.1, "lower": 0.5})
    with pytest.raises(InputError, match="needs a dict"):
        CRAGConfig.from_dict([("upper", 0.5)])  # type: ignore[arg-type]
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(InputError, match="not a JSON object"):
        CRAGConfig.load(tmp_path / "list.json")
    (tmp_path / "broken.json").write_text("{oops")
    with pytest.raises(InputError, match="cannot read CRAGConfig"):
        CRAGConfig.load(tmp_path / "broken.json")
    with pytest.raises(InputError, match="cannot read"):
        CRAGConfig.load(tmp_path / "missing.json")
    with pytest.raises(InputError, match="the config, a dict or the path"):
        as_config(CRAGConfig, 42)


def test_nested_configs_come_back_from_nested_dicts():
    @dataclass
    class Inner(ConfigMixin):
        size: int = 1

    @dataclass
    class Outer(ConfigMixin):
        inner: Inner = field(default_factory=Inner)
        name: str = "x"
        extra: dict = field(default_factory=dict)

    cfg = Outer(Inner(3), "y", {"a": 1})
    back = Outer.from_dict(cfg.to_dict())
    assert back == cfg and isinstance(back.inner, Inner) and back.extra == {"a": 1}
    with pytest.raises(ConfigKeyError, match="unknown Inner fields"):
        Outer.from_dict({"inner": {"sise": 2}})


def test_chain_skins_take_the_config_as_object_dict_or_path(tmp_path):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from test_chains import FakeCritic, FakeLLM, KeywordEvaluator

    from expertrag.chains.corrective import CRAGConfig
    from expertrag.chains.self_reflective import SelfRAGConfig
    from expertrag.langchain import chains as lc
    from expertrag.llama_index import chains as li

    crag = CRAGConfig(upper=0.8, lower=0.3, max_strips=2)
    self_rag = SelfRAGConfig(k=2, candidates=1)
    docs = lambda q, k: []  # noqa: E731
    for given in (crag, crag.to_dict(), str(crag.save(tmp_path / "crag.json"))):
        made = [lc.CorrectiveRAGChain(FakeLLM(), docs, evaluator=KeywordEvaluator(),
                                      config=given).core,
                lc.CorrectedContextRetriever(retriever=docs, llm=FakeLLM(),
                                             evaluator=KeywordEvaluator(), config=given).core,
                li.CorrectedContextRetriever(docs, FakeLLM(), evaluator=KeywordEvaluator(),
                                             config=given).core,
                li.CorrectiveRAGQueryEngine(FakeLLM(), docs, evaluator=KeywordEvaluator(),
                                            config=given).core]
        assert all(core.config == crag for core in made)
    for given in (self_rag, self_rag.to_dict(), self_rag.save(tmp_path / "self_rag.json")):
        made = [lc.SelfRAGChain(FakeLLM(), docs, critic=FakeCritic(), config=given).core,
                li.SelfRAGQueryEngine(FakeLLM(), docs, critic=FakeCritic(), config=given).core]
        assert all(core.config == self_rag for core in made)
    with pytest.raises(ConfigKeyError):
        lc.CorrectiveRAGChain(FakeLLM(), docs, evaluator=KeywordEvaluator(),
                              config={"uper": 0.9})
