"""Named streams: reproducible from one seed, independent of each other, and per sub-run."""

from __future__ import annotations

import doctest

import torch

from icl import rng


def draws(streams: rng.Streams) -> list[torch.Tensor]:
    return [torch.randn(4, generator=g) for g in streams]


def test_same_seed_gives_bit_identical_streams() -> None:
    for a, b in zip(draws(rng.streams(3)), draws(rng.streams(3)), strict=True):
        assert torch.equal(a, b)


def test_streams_are_named_and_distinct() -> None:
    streams = rng.streams(0)
    assert streams._fields == rng.STREAM_NAMES == ("task", "init", "train", "eval")
    values = draws(streams)
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert not torch.equal(values[i], values[j]), (rng.STREAM_NAMES[i], rng.STREAM_NAMES[j])


def test_another_seed_gives_other_numbers() -> None:
    for a, b in zip(draws(rng.streams(0)), draws(rng.streams(1)), strict=True):
        assert not torch.equal(a, b)


def test_parts_have_their_own_streams() -> None:
    whole, part0, part1 = draws(rng.streams(0)), draws(rng.streams(0, part=0)), draws(rng.streams(0, part=1))
    for a, b, c in zip(whole, part0, part1, strict=True):
        assert not torch.equal(a, b) and not torch.equal(b, c) and not torch.equal(a, c)
    for a, b in zip(part1, draws(rng.streams(0, part=1)), strict=True):
        assert torch.equal(a, b)


def test_drawing_from_one_stream_does_not_shift_another() -> None:
    first, second = rng.streams(5), rng.streams(5)
    torch.randn(1000, generator=first.eval)  # a bigger test set
    assert torch.equal(torch.randn(4, generator=first.train), torch.randn(4, generator=second.train))


def test_generator_is_seeded_on_its_device() -> None:
    g = rng.generator(7)
    assert g.device == torch.device("cpu")
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=torch.Generator().manual_seed(7)))


def test_docstring_examples() -> None:
    result = doctest.testmod(rng, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
