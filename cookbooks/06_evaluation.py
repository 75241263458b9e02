"""Cookbook 06: evaluate an LCEL chain and a LlamaIndex query engine with a local judge.

expertrag's judges read their verdicts as probabilities from one forward pass of the local
SmolLM2-135M and its experts, so they cannot fail to parse, never return NaN, and nothing
leaves the machine:

- faithfulness: the ``critic`` expert's IsSup for each sentence of the answer;
- context relevance: the ``relevance`` expert's P(yes) for each retrieved passage;
- answer relevance: an embedding cosine (or the critic's IsUse); correctness: token F1
  against a reference (no model).

1. **LangChain.** Run an ordinary LCEL RAG chain and score its outputs with the
   openevals-style evaluators (``evaluator(inputs=..., outputs=..., reference_outputs=...)``),
   the shape ``langsmith.evaluate`` takes.
2. **LlamaIndex.** Score a query engine's responses with LlamaIndex's ``BatchEvalRunner`` and
   expertrag's ``BaseEvaluator`` subclasses.
3. **Robustness.** Run the RGB suite (noise, negative rejection) on the same small QA set and
   write the Markdown / CSV / PNG / HTML report (``expertrag eval`` does the same from a file).

    python cookbooks/06_evaluation.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from expertrag.evaluation.datasets import QAItem
from expertrag.experts import attach_shipped
from expertrag.models import ExpertLLM
from expertrag.types import Document

CORPUS = [
    "The Saltmere Head lighthouse was built in 1862 on the northern cliffs.",
    "The annual membership fee is 45 euros for adults and 15 euros for students.",
    "Lantern Night is held on the third Saturday of August.",
    "Bread is baked from flour, water, salt and yeast.",
    "The foghorn sounds two blasts every thirty seconds in poor visibility.",
]
QA = [("When was the Saltmere Head lighthouse built?", "1862"),
      ("What is the annual membership fee for adults?", "45 euros"),
      ("When is Lantern Night held?", "the third Saturday of August")]


def langchain(llm: ExpertLLM) -> None:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableParallel, RunnablePassthrough

    from expertrag.experts.grounded_qa import INSTRUCTIONS
    from langchain_expertrag import (
        ChatExpertLLM,
        ExpertHybridRetriever,
        context_relevance_evaluator,
        correctness_evaluator,
        faithfulness_evaluator,
    )

    retriever = ExpertHybridRetriever(documents=CORPUS, k=2)
    prompt = ChatPromptTemplate.from_messages([(
        "human", "Read the passages and answer the question.\n\n{passages}\n\n"
        "Question: {question}\n" + INSTRUCTIONS.replace("{", "{{").replace("}", "}}"))])
    answer = (prompt | ChatExpertLLM.from_core(llm, expert="grounded-qa", max_tokens=32)
              | StrOutputParser())
    chain = RunnableParallel(context=retriever, question=RunnablePassthrough()).assign(
        passages=lambda x: "\n\n".join(f"[{i}] {d.page_content}"
                                       for i, d in enumerate(x["context"], 1))
    ).assign(answer=answer)
    evaluators = [faithfulness_evaluator(llm), context_relevance_evaluator(llm),
                  correctness_evaluator()]
    for question, reference in QA:
        out = chain.invoke(question)
        scores = [e(inputs={"question": question}, outputs=out,
                    reference_outputs={"answer": reference}) for e in evaluators]
        print(f"LangChain: {question} -> {out['answer']}")
        print("   " + ", ".join(f"{s['key']}={s['score']:.2f}" for s in scores))


def llama_index(llm: ExpertLLM) -> None:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.evaluation import BatchEvalRunner
    from llama_index.core.schema import TextNode

    from llama_index.embeddings.expertrag import ExpertEmbedding
    from llama_index.evaluation.expertrag import (
        ExpertContextRelevancyEvaluator,
        ExpertFaithfulnessEvaluator,
    )
    from llama_index.llms.expertrag import ExpertLlamaLLM

    index = VectorStoreIndex([TextNode(text=t) for t in CORPUS], embed_model=ExpertEmbedding())
    engine = index.as_query_engine(llm=ExpertLlamaLLM.from_core(llm, max_new_tokens=32),
                                   similarity_top_k=2)
    questions = [q for q, _ in QA]
    responses = [engine.query(q) for q in questions]
    runner = BatchEvalRunner({"faithfulness": ExpertFaithfulnessEvaluator(llm),
                              "context_relevancy": ExpertContextRelevancyEvaluator(llm)},
                             workers=1)
    results = asyncio.run(runner.aevaluate_responses(queries=questions, responses=responses))
    for name, rows in results.items():
        print(f"LlamaIndex {name}: " + ", ".join(f"{r.score:.2f}" for r in rows))


def robustness(llm: ExpertLLM) -> Path:
    from expertrag.evaluation.judges import FaithfulnessJudge
    from expertrag.evaluation.report import markdown_table, summarize, write_report
    from expertrag.evaluation.robustness import robustness_cases
    from expertrag.evaluation.runner import PIPELINES, run_cases

    gold = {q: [Document(t, id=f"c{i}") for i, t in enumerate(CORPUS) if a.split()[-1] in t]
            for q, a in QA}
    items = [QAItem(id=str(n), question=q, answer=a, gold=gold[q],
                    distractors=[Document(t, id=f"c{i}") for i, t in enumerate(CORPUS)
                                 if Document(t, id=f"c{i}") not in gold[q]])
             for n, (q, a) in enumerate(QA)]
    cases = robustness_cases(items, ["noise", "negative"])
    results = run_cases(cases, {"naive": PIPELINES["naive"]}, llm,
                        judges=[FaithfulnessJudge(llm)], progress=False)
    print(markdown_table(summarize(results)))
    folder = Path(tempfile.mkdtemp(prefix="expertrag-eval-"))
    written = write_report(results, folder, title="cookbook 06 robustness")
    print("report:", written["report.html"])
    return folder


def main() -> None:
    llm = ExpertLLM.shared()
    attach_shipped(llm)  # grounded-qa, relevance, critic
    langchain(llm)
    llama_index(llm)
    robustness(llm)


if __name__ == "__main__":
    main()
