"""How the CLI prints hits: one module, so every command that prints hits (embedded search,
search through a serving process) shares it without importing the CLI itself."""

from __future__ import annotations

import json


def print_hits(hits, as_json: bool) -> None:
    if as_json:
        print(json.dumps([h.to_dict() for h in hits], indent=2))
        return
    if not hits:
        print("no results")
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>3}  {hit.score:7.4f}  {hit.id:>20}  {hit.uri}")
        for channel, ev in (getattr(hit, "evidence", None) or {}).items():
            text = f"  {ev['kind']}: {ev['text']!r}" if ev.get("text") is not None else ""
            print(f"{'':>14}{channel:<6} #{ev['rank']:<4} {ev['score']:9.4f}{text}")
