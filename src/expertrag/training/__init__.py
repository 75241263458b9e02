"""Training LoRA experts: configuration, data builders, the trainer and recipes.

Importing this package is cheap: torch, transformers and peft load only when training runs.
"""

from expertrag.training.config import DEFAULT_TARGET_MODULES, TrainConfig, TrainReport
from expertrag.training.data import (
    IRRELEVANT,
    REFUSAL,
    RELEVANCE_LABELS,
    RELEVANT,
    DataError,
    DataNotFoundError,
    DataRowError,
    build_raft,
    build_relevance,
    build_squad_raft,
    relevance_messages,
    relevance_scores,
    split_rows,
)
from expertrag.training.trainer import TrainingError, encode_row, train_expert

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "IRRELEVANT",
    "REFUSAL",
    "RELEVANCE_LABELS",
    "RELEVANT",
    "DataError",
    "DataNotFoundError",
    "DataRowError",
    "TrainConfig",
    "TrainReport",
    "TrainingError",
    "build_raft",
    "build_relevance",
    "build_squad_raft",
    "encode_row",
    "relevance_messages",
    "relevance_scores",
    "split_rows",
    "train_expert",
]
