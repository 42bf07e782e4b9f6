"""Structured filters -> Milvus expressions, compiled by our code only.

Callers send ``{"field": ..., "op": ..., "value": ...}`` triples. The field must be one of
the declared scalar fields of the ``images`` collection (an allow-list), the operator one
that fits the field's type, and the value of that type. Strings are escaped with
:func:`common.store.quote_string`; numbers are re-rendered from Python ints. A caller
never supplies expression text, so nothing it sends can break out of a literal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common.errors import QueryError
from common.store import prefix_filter, quote_string

# Declared scalar fields of `images` a caller may filter on, and their value types.
FIELDS: dict[str, type] = {
    "id": int, "uri": str, "source": str, "mime": str, "etag": str,
    "width": int, "height": int, "bytes": int, "indexed_at": int,
}
STRING_OPS = ("==", "!=", "in", "not_in", "prefix")
INT_OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not_in")
MAX_FILTERS = 16
MAX_IN_VALUES = 256
MAX_STRING = 4096
INT64 = (-(2**63), 2**63 - 1)


class FilterError(QueryError):
    """A filter names an unknown field or operator, or has a value of the wrong type."""


@dataclass(frozen=True)
class Filter:
    """One (field, op, value) condition; all filters of a request are AND-ed."""

    field: str
    op: str
    value: Any

    def to_dict(self) -> dict:
        return {"field": self.field, "op": self.op, "value": self.value}


def parse_filters(raw: Any) -> list[Filter]:
    """Validate JSON-shaped filters (a list of objects with exactly field, op, value)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise FilterError("filters must be a list of {field, op, value} objects")
    if len(raw) > MAX_FILTERS:
        raise FilterError(f"at most {MAX_FILTERS} filters are allowed, got {len(raw)}")
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, Filter):
            out.append(item)
            continue
        if not isinstance(item, dict) or set(item) != {"field", "op", "value"}:
            raise FilterError(f"filters[{i}] must be an object with exactly the keys field, op, value")
        out.append(Filter(item["field"], item["op"], item["value"]))
    for f in out:
        _check(f)
    return out


def compile_filters(filters: Sequence[Filter | dict] | None) -> str:
    """A Milvus boolean expression for the AND of ``filters`` ("" when there are none)."""
    parsed = parse_filters(list(filters) if filters is not None else None)
    return " and ".join(f"({_compile(f)})" for f in parsed)


def _check(f: Filter) -> None:
    if not isinstance(f.field, str) or f.field not in FIELDS:
        raise FilterError(f"unknown filter field {_short(f.field)}; allowed: {', '.join(sorted(FIELDS))}")
    kind = FIELDS[f.field]
    ops = STRING_OPS if kind is str else INT_OPS
    if f.op not in ops:
        raise FilterError(f"operator {_short(f.op)} is not allowed on {f.field}; allowed: {', '.join(ops)}")
    if f.op in ("in", "not_in"):
        if not isinstance(f.value, list) or not 1 <= len(f.value) <= MAX_IN_VALUES:
            raise FilterError(f"{f.field} {f.op} needs a list of 1 to {MAX_IN_VALUES} values")
        for v in f.value:
            _check_value(f.field, kind, v)
    else:
        _check_value(f.field, kind, f.value)
        if f.op == "prefix" and not f.value:
            raise FilterError(f"{f.field} prefix needs a non-empty string")


def _check_value(name: str, kind: type, value: Any) -> None:
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or not INT64[0] <= value <= INT64[1]:
            raise FilterError(f"{name} takes 64-bit integers, got {_short(value)}")
        return
    if not isinstance(value, str):
        raise FilterError(f"{name} takes strings, got {type(value).__name__}")
    if len(value) > MAX_STRING:
        raise FilterError(f"{name} values are at most {MAX_STRING} characters")
    if any(ord(ch) < 32 for ch in value):
        raise FilterError(f"{name} values must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FilterError(f"{name} values must be valid Unicode text (no lone surrogates)") from None


def _short(value: Any) -> str:
    """A caller's value for an error message: repr (no raw control characters), cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _literal(value: Any) -> str:
    return str(int(value)) if isinstance(value, int) else quote_string(value)


def _compile(f: Filter) -> str:
    if f.op == "prefix":
        return prefix_filter(f.field, f.value)
    if f.op in ("in", "not_in"):
        values = ", ".join(_literal(v) for v in f.value)
        return f"{f.field} {'in' if f.op == 'in' else 'not in'} [{values}]"
    return f"{f.field} {f.op} {_literal(f.value)}"
