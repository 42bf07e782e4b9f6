"""The search channels, one registry: ``clip``, ``phash``, ``bm25``, ``dense``.

Each is a small :class:`query.channels.base.Channel` (encode, search, evidence) in its own
module; :data:`REGISTRY` maps a channel's name to its class, in the order the channels run
and appear in a hit's evidence. A new channel is a new module and one line here (and its
name in :data:`query.vocabulary.CHANNELS`, what callers may ask for).
"""

from __future__ import annotations

from typing import Any

from query.channels.base import Channel, Query
from query.channels.bm25 import Bm25Channel
from query.channels.clip import ClipChannel
from query.channels.dense import DenseChannel
from query.channels.phash import PhashChannel

REGISTRY: dict[str, type[Channel]] = {c.name: c for c in (ClipChannel, PhashChannel, Bm25Channel, DenseChannel)}

__all__ = ["REGISTRY", "Channel", "Query", "build_channels"]


def build_channels(service: Any) -> dict[str, Channel]:
    """One instance of every registered channel for ``service`` (cheap: nothing loads here)."""
    return {name: cls(service) for name, cls in REGISTRY.items()}
