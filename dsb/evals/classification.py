"""The ``classification`` evaluator: cross-entropy and exact accuracy on a dataset split."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from dsb.evals.base import EvalContext, Snapshot, register_evaluator

__all__ = ["Classification", "cross_entropy_and_accuracy"]


def cross_entropy_and_accuracy(logits_NxK: np.ndarray, labels_N: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy (nats, float64 log-sum-exp) and the exact fraction correct."""
    logits = np.asarray(logits_NxK, np.float64)
    labels = np.asarray(labels_N)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(shifted).sum(axis=-1))
    nll = logz - shifted[np.arange(len(labels)), labels]
    correct = int((logits.argmax(axis=-1) == labels).sum())
    return float(nll.mean()), correct / len(labels)


@register_evaluator("classification")
class Classification:
    """Loss and accuracy of the model on ``split`` of the run's dataset (every example)."""

    def __init__(self, ctx: EvalContext, split: str = "test", max_examples: int | None = None):
        data = ctx.load_split(split)
        n = len(data["label"]) if max_examples is None else min(max_examples, len(data["label"]))
        self.images = data["image"][:n]
        self.labels = data["label"][:n]

    def run(self, snapshot: Snapshot) -> Iterator[tuple[str, float]]:
        loss, acc = cross_entropy_and_accuracy(snapshot.predict(self.images), self.labels)
        yield "loss", loss
        yield "accuracy", acc
