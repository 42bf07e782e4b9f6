"""The in-process search service behind an embedded gateway (query.local), on the shared samples."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_the_in_process_service_batches_concurrent_requests(served_samples):
    """The same dynamic batching as a query worker: requests waiting together are answered
    in one batch (one encoder call), each with its own reply."""
    from query.local import LocalSearchClient

    async def go():
        client = LocalSearchClient(served_samples.with_overrides(query_max_wait_ms=200))
        client.start()
        try:
            texts = [f"a photo of a {c}" for c in ("bag", "sneaker", "coat", "dress", "sandal", "shirt")]
            results = await asyncio.gather(*(client.search(text=t, k=3, timeout=120) for t in texts))
            bad = await asyncio.gather(client.search(like=12345, k=3, timeout=120), return_exceptions=True)
            return results, bad[0], client.batches
        finally:
            await client.close()

    results, bad, batches = asyncio.run(go())
    assert max(batches) > 1 and sum(batches) == 7
    assert all(len(r.hits) == 3 for r in results)
    from query.search import SearchService

    service = SearchService(served_samples)  # each answer is the one the service gives alone
    texts = [f"a photo of a {c}" for c in ("bag", "sneaker", "coat", "dress", "sandal", "shirt")]
    assert [[h.id for h in r.hits] for r in results] == [[h.id for h in service.search(text=t, k=3)] for t in texts]
    assert getattr(bad, "code", None) == "not_found"
