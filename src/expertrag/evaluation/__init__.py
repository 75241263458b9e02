"""Evaluation of RAG pipelines: held-out data sets, answer and retrieval metrics, judges."""
