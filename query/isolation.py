"""One bad request never fails another: run a batched step, and if it fails, run it alone
for each of its items so that only the guilty ones get the error.

Batching is what makes the query worker cheap (one encoder call, one Milvus search for
many requests), but a batched call fails as a whole: an input the parser let through and
the model or Milvus then chokes on would cost every neighbour its answer. Parsing refuses
every bad input we know of; this is the net under it for the ones we do not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def run_isolated(items: Sequence[T], step: Callable[[Sequence[T]], None],
                 on_error: Callable[[T, Exception], None]) -> None:
    """``step(items)``; when it raises and holds several items, ``step([item])`` for each.

    ``on_error(item, exc)`` is called for every item whose step failed (alone, or the one
    item of a batch of one). ``step`` must be safe to repeat for an item (it only computes
    and stores per-item results)."""
    if not items:
        return
    try:
        step(items)
        return
    except Exception as exc:
        if len(items) == 1:
            on_error(items[0], exc)
            return
        log.warning("batched step failed; answering its requests one by one",
                    extra={"items": len(items), "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
    for item in items:
        try:
            step([item])
        except Exception as exc:
            on_error(item, exc)
