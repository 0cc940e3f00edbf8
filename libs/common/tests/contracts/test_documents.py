"""The JSON every intake accepts: strict RFC 8259 that PostgreSQL can store as jsonb, refused with a place."""

from __future__ import annotations

import json
import random

import pytest
from pydantic_core import from_json

from gridloop_common.contracts.documents import (
    MAX_DEPTH,
    MAX_NUMBER_DIGITS,
    RefusedDocument,
    load_document,
    may_hold_refused_values,
)

REFUSED = [
    (b'{"a": {"v": NaN}}', "a.v", "NaN is not a JSON number"),
    (b'{"a": [1, Infinity]}', "a[1]", "Infinity is not a JSON number"),
    (b'{"a": -Infinity}', "a", "-Infinity is not a JSON number"),
    (b'{"a": 1e400}', "a", "overflows a double"),
    (b'{"a": -1.5E+309}', "a", "overflows a double"),
    (b'{"a": "x\\u0000y"}', "a", "U+0000"),
    (b'{"a\\u0000": 1}', "a\\u0000", "key holds U+0000"),
    (b'{"a": ["\\ud800"]}', "a[0]", "lone UTF-16 surrogate"),
    (b'{"a": "\\udc00x"}', "a", "lone UTF-16 surrogate"),
    (b'{"\\ud800": 1}', "\\ud800", "key holds a lone UTF-16 surrogate"),
    ('{"a": "\ud800"}'.encode("utf-8", "surrogatepass"), "a", "lone UTF-16 surrogate"),  # raw, not escaped
    (b'{"a": ' + b"9" * 5000 + b"}", "a", "number of 5000 digits"),
    (b'{"a": 0.' + b"1" * 2000 + b"}", "a", "number of 2001 digits"),
    (b'{"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "", f"nested more than {MAX_DEPTH} levels"),
    (b'{"a": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}", "a" + "[0]" * (MAX_DEPTH - 1), "nested more than"),
    (b'{"a": 1', "", "not JSON"),
    (b'{"a": "\x01"}', "", "not JSON"),  # a raw control character
    (b'{"a": "\xff"}', "", "not UTF-8"),
]


@pytest.mark.parametrize(("raw", "location", "problem"), REFUSED)
def test_refused_with_the_problem_and_where(raw: bytes, location: str, problem: str) -> None:
    with pytest.raises(RefusedDocument) as refused:
        load_document(raw)
    assert refused.value.location == location
    assert problem in refused.value.problem
    # The reason travels in JSON answers and AMQP headers: it must itself be storable text.
    str(refused.value).encode("utf-8")
    assert "\x00" not in str(refused.value)


def _fast_parser_refuses(raw: bytes) -> bool:
    try:
        from_json(raw)
    except ValueError:
        return True
    return False


@pytest.mark.parametrize(("raw", "location", "problem"), REFUSED)
def test_the_fast_look_never_clears_what_is_refused(raw: bytes, location: str, problem: str) -> None:
    # What the look clears goes to pydantic's parser (the gateway's fast path): together they refuse it all.
    assert may_hold_refused_values(raw) or _fast_parser_refuses(raw)


ACCEPTED = [
    b'{"a": "NaN", "b": "Infinity"}',
    b'{"a": "\\ud83d\\ude00", "b": "\\u00e9", "c": "\\\\u0000"}',
    b'{"a": 1e308, "b": -1e-400, "c": 12345678901234567890, "d": 0.1}',
    b'{"a": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}",
    b'{"a": ' + b"9" * MAX_NUMBER_DIGITS + b"}",
    json.dumps({"é": "ü", "list": [1, 2.5, None, True]}, ensure_ascii=False).encode("utf-16"),
]


@pytest.mark.parametrize("raw", ACCEPTED)
def test_accepted_as_json_reads_it(raw: bytes) -> None:
    assert load_document(raw) == json.loads(raw)


def test_an_ordinary_envelope_passes_the_fast_look() -> None:
    body = json.dumps(
        {
            "event_type": "command.created",
            "event_object": {"id": "5f0c6a9e-3b1d-4c51-9b7e-2f7d1c9a4e11", "setpoint_w": 3000, "duration_s": 1800.5},
            "timestamp": "2026-12-07T10:00:00.123456+00:00",
        }
    ).encode()
    assert not may_hold_refused_values(body)


def test_the_fast_look_agrees_with_the_full_check_on_random_numbers() -> None:
    generator = random.Random(20261207)
    for _ in range(2000):
        mantissa = "".join(generator.choices("0123456789", k=generator.randint(1, 320)))
        exponent = generator.choice(["", f"e{generator.randint(0, 450)}", f"E+{generator.randint(0, 450)}"])
        raw = f'{{"v": {mantissa.lstrip("0") or "0"}.5{exponent}}}'.encode()
        try:
            load_document(raw)
        except RefusedDocument:
            assert may_hold_refused_values(raw), raw
