"""Shared helpers of the sidecar unit tests: ways to cut a byte stream into pieces."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

Splitter = Callable[[bytes], Iterator[bytes]]


def whole(data: bytes) -> Iterator[bytes]:
    """The data in one piece."""
    yield data


def byte_by_byte(data: bytes) -> Iterator[bytes]:
    """The data one byte at a time."""
    for index in range(len(data)):
        yield data[index : index + 1]


def random_splits(seed: int) -> Splitter:
    """A splitter cutting the data at random points (deterministic per seed)."""

    def split(data: bytes) -> Iterator[bytes]:
        rng = random.Random(seed)
        position = 0
        while position < len(data):
            step = rng.randint(1, 9)
            yield data[position : position + step]
            position += step

    return split


@pytest.fixture(
    params=["whole", "byte_by_byte", "random_1", "random_2", "random_3"],
)
def splitter(request: pytest.FixtureRequest) -> Splitter:
    """Each test using it runs with the data whole, byte by byte and at random split points."""
    name = str(request.param)
    if name == "whole":
        return whole
    if name == "byte_by_byte":
        return byte_by_byte
    return random_splits(int(name.rsplit("_", 1)[1]))
