"""The JSON gridloop accepts from outside: strict RFC 8259 that PostgreSQL can store as jsonb.

Python's ``json`` module is lenient where jsonb is not: it reads ``NaN``, ``Infinity`` and
``-Infinity``, numbers that overflow to infinity (``1e400``), ``\\u0000`` and lone surrogates
(``"\\ud800"``). PostgreSQL refuses each of those in jsonb (22P02, 22P05, 22021), so a body holding one
anywhere could be accepted at the door and then never stored. Deep nesting and very long numbers make
the parsers themselves fail (RecursionError, Python's integer digit limit). ``load_document`` refuses
all of these with a reason that names the place; every intake (webhooks, the message queue) uses it.

``may_hold_refused_values`` is a cheap, conservative look at the raw bytes for a fast path that parses
with another parser: False only when the body cannot hold anything ``load_document`` refuses.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

__all__ = [
    "MAX_DEPTH",
    "MAX_NUMBER_DIGITS",
    "RefusedDocument",
    "load_document",
    "may_hold_refused_values",
]

# Upstream envelopes nest three or four levels; 64 leaves room for any event object and keeps every
# parser (Python's recursion, pydantic's 200 levels, PostgreSQL's stack) far from its own limit.
MAX_DEPTH: Final = 64
# Below Python's 4300-digit integer limit, so the answer does not depend on the interpreter's setting.
MAX_NUMBER_DIGITS: Final = 1000

# Escapes that decode to U+0000 or to a UTF-16 surrogate half (paired or not: the full check decides).
_RISKY_ESCAPE: Final = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
# Every digit becomes "0" and "E" becomes "e"; "+" is dropped so "1e+400" reads as "0e000".
_NUMBER_SHAPES: Final = bytes.maketrans(b"123456789E", b"000000000e")
# A float literal can only overflow with a three-digit exponent or a mantissa of 210+ digits (10**210 times
# a two-digit exponent's 10**99 is still below 1.8e308).
_LONG_EXPONENT: Final = b"0e000"
_LONG_DIGITS: Final = b"0" * 200


class RefusedDocument(ValueError):
    """A JSON document gridloop does not accept; ``location`` is the dotted path of the value, or ""."""

    def __init__(self, problem: str, location: str = "") -> None:
        super().__init__(f"{location}: {problem}" if location else problem)
        self.problem = problem
        self.location = location


class _NotFinite:
    """NaN, ±Infinity or a number that overflows a double, as read, so the walk can say where it was."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _read_constant(text: str) -> _NotFinite:
    return _NotFinite(f"{text} is not a JSON number (RFC 8259) and cannot be stored")


class _LongNumber:
    """A number literal with more digits than MAX_NUMBER_DIGITS, not converted."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _read_integer(text: str) -> int | _LongNumber:
    digits = len(text) - text.startswith("-")
    return _LongNumber(digits) if digits > MAX_NUMBER_DIGITS else int(text)


def _read_float(text: str) -> float | _LongNumber | _NotFinite:
    if len(text) > MAX_NUMBER_DIGITS:
        return _LongNumber(sum(character.isdigit() for character in text))
    value = float(text)
    return value if math.isfinite(value) else _NotFinite(f"{text[:40]} overflows a double and cannot be stored")


_DECODER: Final = json.JSONDecoder(parse_constant=_read_constant, parse_int=_read_integer, parse_float=_read_float)


def load_document(raw: bytes | str) -> Any:
    """The JSON value of ``raw``, or RefusedDocument saying what is wrong and where.

    Refused: text that is not JSON (or not UTF-8/16/32), NaN and ±Infinity, numbers that overflow a
    double, numbers of more than MAX_NUMBER_DIGITS digits, nesting deeper than MAX_DEPTH, and strings
    or keys holding U+0000 or a lone surrogate.
    """
    try:
        text = raw if isinstance(raw, str) else raw.decode(json.detect_encoding(raw), "surrogatepass")
        value = _DECODER.decode(text)
    except UnicodeDecodeError as error:
        raise RefusedDocument(f"not UTF-8 text: {error.reason} at byte {error.start}") from None
    except json.JSONDecodeError as error:
        raise RefusedDocument(f"not JSON: {error}") from None
    except RecursionError:
        raise RefusedDocument(f"nested more than {MAX_DEPTH} levels deep") from None
    _check(value, [], 1)
    return value


def _location(path: list[str | int]) -> str:
    shown = ""
    for part in path:
        shown += f"[{part}]" if isinstance(part, int) else f".{_printable(part)}" if shown else _printable(part)
    return shown


def _printable(key: str) -> str:
    # The location travels in HTTP answers, logs and AMQP headers: no NUL, no lone surrogate, no megabyte key.
    shown = key[:64].replace("\x00", "\\u0000").encode("utf-8", "backslashreplace").decode("utf-8")
    return shown + ("..." if len(key) > 64 else "")


def _check_text(text: str, path: list[str | int], what: str) -> None:
    if "\x00" in text:
        raise RefusedDocument(f"{what} holds U+0000 (\\u0000), which PostgreSQL cannot store", _location(path))
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise RefusedDocument(
                f"{what} holds a lone UTF-16 surrogate (\\ud800-\\udfff without its pair), which is not Unicode text",
                _location(path),
            ) from None


def _check(value: Any, path: list[str | int], depth: int) -> None:
    # Recursion is bounded by MAX_DEPTH: a deeper value is refused before its children are visited.
    if isinstance(value, str):
        _check_text(value, path, "string")
    elif isinstance(value, dict | list):
        if depth > MAX_DEPTH:
            raise RefusedDocument(f"nested more than {MAX_DEPTH} levels deep", _location(path))
        if isinstance(value, dict):
            for key, item in value.items():
                path.append(key)
                _check_text(key, path, "key")
                _check(item, path, depth + 1)
                path.pop()
        else:
            for index, item in enumerate(value):
                path.append(index)
                _check(item, path, depth + 1)
                path.pop()
    elif isinstance(value, _NotFinite):
        raise RefusedDocument(value.problem, _location(path))
    elif isinstance(value, _LongNumber):
        raise RefusedDocument(f"number of {value.digits} digits; at most {MAX_NUMBER_DIGITS}", _location(path))


def may_hold_refused_values(raw: bytes) -> bool:
    """False only when ``raw``, if it is UTF-8 JSON at all, holds nothing ``load_document`` would refuse.

    A conservative look at the bytes (a few C-speed scans): a string that merely contains "NaN", an
    escaped emoji or many brackets answers True, and then the full check decides. Invalid UTF-8, raw
    control characters and other encodings are left to the caller's parser, which must refuse them.
    """
    if b"NaN" in raw or b"Infinity" in raw:
        return True
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        return True
    if _RISKY_ESCAPE.search(raw) is not None:
        return True
    shapes = raw.translate(_NUMBER_SHAPES, b"+")
    return _LONG_EXPONENT in shapes or _LONG_DIGITS in shapes
