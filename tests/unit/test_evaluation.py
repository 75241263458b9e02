"""Evaluation: metrics (checked against ir-measures), judges on fake models, the RAGAS
adapter on a tiny random model (never NaN, never OpenAI), held-out item builders."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import random

import pytest
from test_chains import FakeCritic

from expertrag.errors import InputError
from expertrag.evaluation.judges import (
    AnswerRelevanceJudge,
    ContextRelevanceJudge,
    EvalItem,
    FaithfulnessJudge,
    answer_sentences,
)
from expertrag.evaluation.metrics import (
    contains,
    exact_match,
    hit_at_k,
    mrr,
    ndcg_at_k,
    normalize_answer,
    recall_at_k,
    token_f1,
)


# ------------------------------------------------------------------------------ metrics
def test_answer_metrics_follow_squad():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the Eiffel tower.", ["Eiffel Tower", "x"]) == 1.0
    assert token_f1("Paris France", "Paris") == pytest.approx(2 / 3)
    assert token_f1("Paris", ["London", "Paris"]) == 1.0
    assert contains("It was built in 1862 [1].", "1862") == 1.0
    assert contains("no", ["", "  "]) == 0.0


def test_retrieval_metrics_by_hand():
    ranked = ["a", "b", "c", "d"]
    assert hit_at_k(ranked, {"c"}, 2) == 0.0 and hit_at_k(ranked, {"c"}, 3) == 1.0
    assert recall_at_k(ranked, {"a", "d", "z"}, 2) == pytest.approx(1 / 3)
    assert mrr(ranked, {"c", "d"}) == pytest.approx(1 / 3)
    assert mrr(ranked, {"d"}, k=2) == 0.0
    assert ndcg_at_k(ranked, {"a": 1}, 3) == 1.0
    assert math.isnan(recall_at_k(ranked, set(), 3))


def test_retrieval_metrics_match_ir_measures():
    ir = pytest.importorskip("ir_measures")
    rng = random.Random(0)
    qrels, run, ours = [], [], {"ndcg": [], "rr": [], "r": [], "success": []}
    for q in range(20):
        docs = [f"d{j}" for j in range(15)]
        rel = {d: rng.choice([1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 4))}
        ranked = rng.sample(docs, 12)
        qrels += [ir.Qrel(str(q), d, g) for d, g in rel.items()]
        run += [ir.ScoredDoc(str(q), d, float(100 - i)) for i, d in enumerate(ranked)]
        ours["ndcg"].append(ndcg_at_k(ranked, rel, 10))
        ours["rr"].append(mrr(ranked, rel, 10))
        ours["r"].append(recall_at_k(ranked, rel, 5))
        ours["success"].append(hit_at_k(ranked, rel, 5))
    measures = {"ndcg": ir.nDCG @ 10, "rr": ir.RR @ 10, "r": ir.R @ 5,
                "success": ir.Success @ 5}
    got = ir.calc_aggregate(list(measures.values()), qrels, run)
    for key, measure in measures.items():
        assert sum(ours[key]) / len(ours[key]) == pytest.approx(got[measure], abs=1e-6), key


# ------------------------------------------------------------------------------ judges
class FakeLLM:
    experts = ["relevance", "critic"]  # noqa: RUF012

    def __init__(self) -> None:
        from tiny_models import tiny_tokenizer

        self.tokenizer = tiny_tokenizer()

    def label_probabilities(self, convs, labels=("yes", "no"), expert=None, batch_size=16,
                            raw=False):
        out = []
        for conv in convs:
            text = conv[-1]["content"]
            yes = 0.9 if "Paris" in text.split("Question:")[0] else 0.1
            pos = [lab for lab in labels if lab.strip().lower() == labels[0]]
            out.append({lab: yes / len(pos) if lab in pos
                        else (1 - yes) / (len(labels) - len(pos)) for lab in labels})
        return out


def test_context_relevance_judge_batches_and_reduces():
    judge = ContextRelevanceJudge(FakeLLM())
    items = [EvalItem("Capital of France?", contexts=["Paris is the capital.", "Dogs bark."]),
             {"question": "Capital?", "contexts": []}]
    first, empty = judge(items)
    assert first.score == pytest.approx(0.5) and first.parts == pytest.approx([0.9, 0.1])
    assert "1 of 2 contexts relevant" in first.feedback
    assert empty.score == 0.0 and not empty.passing
    assert ContextRelevanceJudge(FakeLLM(), reduce="max")(items[:1])[0].score == \
        pytest.approx(0.9)
    with pytest.raises(InputError, match="no question"):
        judge([EvalItem("")])


def test_faithfulness_judge_per_sentence_and_refusals(monkeypatch):
    judge = FaithfulnessJudge(FakeLLM())
    judge.critic = FakeCritic()
    items = [EvalItem("Capital?", "Paris is the capital [1]. Dogs bark.", ["Paris is big."]),
             EvalItem("Capital?", "I don't know.", ["Paris is big."]),
             EvalItem("Capital?", "Paris.", [])]
    supported, refusal, bare = judge(items)
    assert supported.parts == pytest.approx([0.8, 0.15])  # fully .7 + .5 * .2; no .1 + .05
    assert supported.score == pytest.approx(0.475) and not supported.passing
    assert refusal.score == 1.0 and "refusal" in refusal.feedback
    assert bare.score == 0.0
    assert answer_sentences("One [1]. Two? Three") == ["One.", "Two?", "Three"]


def test_answer_relevance_judge_maps_utility_to_unit_range():
    judge = AnswerRelevanceJudge(FakeLLM(), method="isuse")
    judge.critic = FakeCritic()
    good, bad = judge([EvalItem("Capital?", "Paris"), EvalItem("Capital?", "I don't know.")])
    assert 0.5 < good.score <= 1.0 and bad.score < 0.5

    class Emb:
        def embed_documents(self, texts):
            return [[1.0, 0.0] if "Paris" in t or "Capital" in t else [0.0, 1.0]
                    for t in texts]

    emb = AnswerRelevanceJudge(embedder=Emb())  # the default: embeddings, no LLM needed
    assert emb.method == "embedding" and emb.threshold == 0.19
    assert [r.score for r in emb([EvalItem("Capital?", "Paris"),
                                  EvalItem("Capital?", "Dogs")])] == [1.0, 0.0]
    assert judge.threshold == 0.5
    with pytest.raises(InputError, match="needs the llm"):
        AnswerRelevanceJudge(method="isuse")
    with pytest.raises(InputError, match="method"):
        AnswerRelevanceJudge(method="vibes", embedder=Emb())


# ------------------------------------------------------------------------------ RAGAS
ragas_needed = pytest.mark.skipif(importlib.util.find_spec("ragas") is None,
                                  reason="ragas is not installed (pip install 'expertrag[ragas]')")


@ragas_needed
def test_import_ragas_works_around_the_vertexai_import(monkeypatch):
    from expertrag.evaluation.ragas_backend import import_ragas

    ragas = import_ragas()
    assert ragas.__version__
    from ragas.metrics.collections import Faithfulness  # noqa: F401 - importable now


@ragas_needed
def test_ragas_metrics_never_nan_with_the_local_judge():
    from tiny_models import tiny_llm

    from expertrag.evaluation.ragas_backend import (
        ExpertRagasEmbeddings,
        ExpertRagasLLM,
        no_openai,
        ragas_metric,
    )

    judge = ExpertRagasLLM(tiny_llm(max_positions=8192), max_new_tokens=24)

    class Emb:
        def embed_query(self, text):
            return [float(len(text) % 7), 1.0]

        def embed_documents(self, texts):
            return [self.embed_query(t) for t in texts]

    embeddings = ExpertRagasEmbeddings(Emb())
    inputs = [{"user_input": f"Where is Paris {i}?", "response": f"Paris is in France {i}.",
               "retrieved_contexts": ["Paris is the capital of France."]} for i in range(3)]
    with no_openai():
        metric = ragas_metric("Faithfulness", llm=judge)
        results = metric.batch_score(inputs)
        assert len(results) == 3
        assert all(not math.isnan(r.value) and 0.0 <= r.value <= 1.0 for r in results)
        assert judge.calls >= 3
        rel = ragas_metric("AnswerRelevancy", llm=judge, embeddings=embeddings, strictness=1)
        value = rel.score(user_input="Where is Paris?", response="In France.").value
        assert not math.isnan(value)
    row = {"user_input": "Where is Paris?", "response": "Paris is in France.",
           "reference": "Paris is in France.",
           "retrieved_contexts": ["Paris is the capital of France.", "Rome is in Italy."]}
    fields = {"NoiseSensitivity": ("user_input", "response", "reference", "retrieved_contexts"),
              "FactualCorrectness": ("response", "reference"),
              "ContextRecall": ("user_input", "retrieved_contexts", "reference"),
              "SemanticSimilarity": ("response", "reference"),
              "ExactMatch": ("response", "reference"),  # the non-LLM ones need no judge
              "StringPresence": ("response", "reference")}
    with no_openai():
        for name, keys in fields.items():
            metric = ragas_metric(name, llm=judge, embeddings=embeddings)
            value = metric.score(**{k: row[k] for k in keys}).value
            assert not math.isnan(float(value)), name


@ragas_needed
def test_openai_fallback_is_impossible(monkeypatch):
    from expertrag.evaluation.ragas_backend import OpenAIFallbackError, no_openai

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with no_openai():
        from ragas.llms import base

        with pytest.raises(OpenAIFallbackError, match="default OpenAI client"):
            base.llm_factory("gpt-4o-mini")
    from expertrag.evaluation.ragas_backend import ragas_metric

    with pytest.raises(InputError, match="needs an LLM judge"):
        ragas_metric("Faithfulness")


def test_batcher_groups_concurrent_requests_by_schema():
    from expertrag.evaluation.ragas_backend import _Batcher

    calls = []

    def run(prompts, model):
        calls.append((len(prompts), model))
        return [f"{model.__name__}:{p}" for p in prompts]

    class A:
        pass

    class B:
        pass

    async def go():
        b = _Batcher(run, 0.01)
        return await asyncio.gather(b.submit("1", A), b.submit("2", A), b.submit("3", B))

    assert asyncio.run(go()) == ["A:1", "A:2", "B:3"]
    assert sorted(c[0] for c in calls) == [1, 2]


def test_non_empty_arrays_in_schemas():
    from expertrag.evaluation.ragas_backend import _non_empty_arrays

    schema = {"type": "object", "properties": {"s": {"type": "array", "items": {
        "type": "string"}}}, "$defs": {"X": {"type": "array", "minItems": 2}}}
    out = _non_empty_arrays(schema)
    assert out["properties"]["s"]["minItems"] == 1 and out["$defs"]["X"]["minItems"] == 2
    assert "minItems" not in schema["properties"]["s"]  # a copy


class _ShortVerdictLLM:
    """A stand-in ExpertLLM that answers every schema with as few array items as it allows:
    three statements when decomposing, but one to three verdicts (in turn) when judging
    unless the schema pins the count, the failure a small judge showed on NoiseSensitivity."""

    def __init__(self):
        self.calls, self.turn = 0, 0

    def _fill(self, schema, root):
        if "$ref" in schema:
            return self._fill(root["$defs"][schema["$ref"].rsplit("/", 1)[-1]], root)
        kind = schema.get("type")
        if kind == "object":
            return {k: self._fill(v, root) for k, v in schema["properties"].items()}
        if kind == "array":
            item = schema["items"]
            if "$ref" not in item and item.get("type") == "string":
                n = 3
            else:
                self.turn += 1
                n = schema["minItems"] if "maxItems" in schema else 1 + self.turn % 3
            return [self._fill(item, root) for _ in range(n)]
        return 1 if kind == "integer" else "Paris is in France."

    def generate(self, convs, *, expert=None, json_schema=None, max_new_tokens=256):
        from types import SimpleNamespace

        self.calls += 1
        return [SimpleNamespace(parsed=self._fill(json_schema, json_schema)) for _ in convs]


@ragas_needed
def test_verdict_lists_are_pinned_to_the_statements():
    from expertrag.evaluation.ragas_backend import ExpertRagasLLM, no_openai, ragas_metric

    fake = _ShortVerdictLLM()
    judge = ExpertRagasLLM(fake)
    row = {"user_input": "Where is Paris?", "response": "Paris is in France.",
           "reference": "Paris is in France.",
           "retrieved_contexts": ["Paris is the capital of France.", "Rome is in Italy."]}
    with no_openai():
        value = ragas_metric("NoiseSensitivity", llm=judge).score(**row).value
        faith = ragas_metric("Faithfulness", llm=judge).score(
            **{k: row[k] for k in ("user_input", "response", "retrieved_contexts")}).value
    assert value == 0.0 and faith == 1.0  # every verdict 1: supported, so no noise error
    assert fake.calls > 4


def test_pin_to_input_reads_the_item_not_the_examples():
    from expertrag.evaluation.ragas_backend import _pin_to_input

    schema = {"type": "object", "properties": {
        "statements": {"type": "array", "items": {"$ref": "#/$defs/V"}},
        "notes": {"type": "array", "items": {"type": "string"}}},
        "$defs": {"V": {"type": "object", "properties": {"statement": {"type": "string"},
                                                         "verdict": {"type": "integer"}}}}}
    prompt = ('Example input: {"statements": ["x"]}\n-----\n\n'
              'Now perform the same with the following input\ninput: {\n'
              '    "context": "it says input: {\\"statements\\": [1]}",\n'
              '    "statements": ["a", "b", "c"], "notes": ["n"]\n}\nOutput: ')
    out, pinned = _pin_to_input(schema, prompt)
    assert pinned == 3
    assert out["properties"]["statements"]["minItems"] == 3
    assert out["properties"]["statements"]["maxItems"] == 3
    verdict = out["properties"]["statements"]["items"]["properties"]["verdict"]
    assert (verdict["minimum"], verdict["maximum"]) == (0, 1)  # 0/1, as the prompt asks
    assert "maxItems" not in out["properties"]["notes"]  # strings, not verdicts
    assert "maxItems" not in schema["properties"]["statements"]  # a copy
    assert "minimum" not in schema["$defs"]["V"]["properties"]["verdict"]
    assert _pin_to_input(schema, "no input here") == (schema, 0)


def test_one_failing_row_fails_only_its_own_item():
    """A row the model cannot answer (here: it raises whenever that prompt is in the batch)
    is retried alone; the rest of its batch still gets answers."""
    from pydantic import BaseModel

    from expertrag.evaluation.ragas_backend import ExpertRagasLLM

    class Out(BaseModel):
        answer: str

    class Flaky:
        def generate(self, convs, *, expert=None, json_schema=None, max_new_tokens=256):
            from types import SimpleNamespace

            if any("bad" in c[0]["content"] for c in convs):
                raise RuntimeError("could not close the output")
            return [SimpleNamespace(parsed={"answer": c[0]["content"]}) for c in convs]

    judge = ExpertRagasLLM(Flaky())

    async def go():
        return await asyncio.gather(*(judge.agenerate(p, Out) for p in ("a", "bad", "c")),
                                    return_exceptions=True)

    got = asyncio.run(go())
    assert [g.answer for g in (got[0], got[2])] == ["a", "c"]
    assert isinstance(got[1], RuntimeError)
    with pytest.raises(RuntimeError, match="could not close"):
        judge.generate("bad", Out)


# ------------------------------------------------------------------------------ skins
def test_langchain_style_evaluators():
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document as LCDocument

    from expertrag.langchain.evaluators import (
        context_relevance_evaluator,
        correctness_evaluator,
        faithfulness_evaluator,
    )

    rel = context_relevance_evaluator(FakeLLM())
    out = rel(inputs={"question": "Capital of France?"},
              outputs={"answer": "Paris", "context": [LCDocument(page_content="Paris!")]})
    assert out == {"key": "context_relevance", "score": pytest.approx(0.9),
                   "comment": "1 of 1 contexts relevant"}
    faith = faithfulness_evaluator(FakeLLM())
    faith.judge.critic = FakeCritic()
    rows = faith.batch([({"question": "Q?"}, {"answer": "Paris.", "contexts": ["Paris is."]},
                         None),
                        ("Q?", {"output": "I don't know."}, None)])
    assert rows[0]["score"] == pytest.approx(0.8) and rows[1]["score"] == 1.0
    correct = correctness_evaluator()
    assert correct(outputs={"answer": "Paris [1]."}, reference_outputs={"answer": "Paris"})[
        "score"] == 1.0
    assert correct(outputs="x", reference_outputs={})["score"] is None


async def test_llama_index_evaluators_and_batch_runner():
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.response.schema import Response
    from llama_index.core.evaluation import BatchEvalRunner
    from llama_index.core.schema import NodeWithScore, TextNode

    from expertrag.llama_index.evaluators import (
        ExpertContextRelevancyEvaluator,
        ExpertCorrectnessEvaluator,
        ExpertFaithfulnessEvaluator,
    )

    faith = ExpertFaithfulnessEvaluator(FakeLLM())
    faith._judge.critic = FakeCritic()
    result = await faith.aevaluate(query="Q?", response="Paris.", contexts=["Paris is big."])
    assert result.passing and result.score == pytest.approx(0.8)
    assert (await faith.aevaluate(response="x")).invalid_result
    rel = ExpertContextRelevancyEvaluator(FakeLLM())
    runner = BatchEvalRunner({"relevancy": rel}, workers=1)
    responses = [Response(response="Paris", source_nodes=[NodeWithScore(node=TextNode(
        text="Paris is the capital."), score=1.0)])] * 2
    got = await runner.aevaluate_responses(queries=["Capital?", "Capital?"],
                                           responses=responses)
    assert [r.score for r in got["relevancy"]] == pytest.approx([0.9, 0.9])
    correct = ExpertCorrectnessEvaluator()
    one_line = await correct.aevaluate(query="Q", response="Paris.", reference="Paris")
    assert one_line.passing and one_line.score == 1.0
