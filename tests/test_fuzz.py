"""Decoder fuzzing: arbitrary and mutated packets raise nothing but WireError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dgsm_integrations.mslookup import DEFAULT_SUFFIX, Answer, WireError, wire
from dgsm_integrations.mslookup.engine import _name_at
from dgsm_integrations.mslookup.wire import decode_answer, decode_answer_to, decode_query

from .vectors import all_vectors, vector

SEEDS = [vector(v) for v in all_vectors()]


def _decode_both(data: bytes) -> None:
    for decode in (decode_answer, decode_query):
        try:
            result = decode(data)
        except WireError:
            continue
        if decode is decode_answer:
            assert isinstance(result, Answer)
            assert result.v4 is not None or result.v6 is not None
    _same_verdict_on_the_engine_path(data)


def _same_verdict_on_the_engine_path(data: bytes) -> None:
    """The engine decodes an answer to one of its questions with decode_answer_to (the
    name known); it must accept and reject exactly what decode_answer does."""
    name = _name_at(data)
    if name is None:
        return
    try:
        full: Answer | None = decode_answer(data)
    except WireError:
        full = None
    if full is None:
        try:
            text, _ = wire._read_name(data, 12)
            query = wire._query_from_name(text, DEFAULT_SUFFIX)
        except WireError:
            return  # the name is no valid query: the engine has no flight for it
    else:
        query = full.query
    try:
        fast: Answer | None = decode_answer_to(data, name, query)
    except WireError:
        fast = None
    assert fast == full


@pytest.mark.slow  # 3,000 examples: seconds
@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    _decode_both(data)


@pytest.mark.slow  # 3,000 examples: seconds
@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                                        min_size=1, max_size=6),
       st.integers(0, 400), st.binary(max_size=8))
def test_mutated_vectors(seed: bytes, flips: list[tuple[int, int]], cut: int,
                         tail: bytes) -> None:
    data = bytearray(seed)
    for pos, value in flips:
        data[pos % len(data)] = value
    _decode_both(bytes(data))
    _decode_both(bytes(data[: cut % (len(data) + 1)]) + tail)
