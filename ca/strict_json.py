"""JSON as RFC 8259 has it and nothing more, for every reader of foreign JSON (the RA's bodies,
``kakuin issue --applicant`` and ``--batch`` lines).

Python's own reader is lenient where a CA must not be: a 5,000-digit integer makes ``int()`` raise
deep inside (its digit limit), NaN and Infinity are accepted, and a member given twice silently
keeps the last one (which of the two did the applicant mean?). ``StrictJSONError`` (a
``ValueError``) says what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

MAX_NUMBER_CHARS = 32  # no number Kakuin reads needs more; int() of 4,301 digits raises ValueError


class StrictJSONError(ValueError):
    pass


def _number(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if len(text) > MAX_NUMBER_CHARS:
            raise StrictJSONError(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
        return kind(text)

    return parse


def _no_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not a JSON value")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise StrictJSONError(f"the member {key!r} appears twice in one object")
        data[key] = value
    return data


def parse_json(raw: bytes | str) -> Any:
    """Parse ``raw``; ``ValueError`` (``json.JSONDecodeError`` or ``StrictJSONError``) when it is
    not plain JSON."""
    return json.loads(
        raw,
        parse_int=_number(int),
        parse_float=_number(float),
        parse_constant=_no_constant,
        object_pairs_hook=_no_duplicates,
    )
