"""Named random streams derived from one seed.

A run uses separate ``torch.Generator`` streams for the task (covariances), the model's
initialisation, the training prompts and the evaluation prompts, so that growing the test set or
changing the initialisation never shifts the training data. Nothing here touches the global seed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

STREAM_NAMES = ("task", "init", "train", "eval")


class Streams(NamedTuple):
    """One generator per purpose, all on the run's device."""

    task: torch.Generator
    init: torch.Generator
    train: torch.Generator
    eval: torch.Generator


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def streams(seed: int, device: torch.device | str = "cpu", *, part: int | None = None) -> Streams:
    """Independent streams for ``seed``: each is seeded by a child of ``numpy.random.SeedSequence(seed)``.

    ``part`` gives a sub-run (one training run of a sweep) streams of its own, so that its numbers do
    not depend on which other sub-runs ran before it or came from the cache.

    >>> a, b = streams(0), streams(0)
    >>> bool(torch.equal(torch.randn(3, generator=a.train), torch.randn(3, generator=b.train)))
    True
    """
    spawn_key = () if part is None else (int(part),)
    children = np.random.SeedSequence(int(seed), spawn_key=spawn_key).spawn(len(STREAM_NAMES))
    seeds = [int(child.generate_state(1, dtype=np.uint64)[0] >> 1) for child in children]
    return Streams(*(generator(s, device) for s in seeds))
