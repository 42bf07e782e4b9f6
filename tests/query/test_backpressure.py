"""Backpressure on the request stream (real Redis, no worker: the worst case): a backlog over
its bound refuses new requests at once with a typed ``overloaded`` error, the stream is
capped (XADD MAXLEN ~), and a caller that gives up deletes its own entry, so timed-out
uploads do not pile up in the Redis that also carries ingest."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from common.settings import Settings
from query.client import ADD_SCRIPT, AsyncSearchClient, Overloaded, SearchClient, SearchTimeout

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def settings(tmp_path, redis_server) -> Settings:
    return Settings.from_env({}, clip_model="imgsearch-fmnist-lit-minilm",
                             data_dir=tmp_path, redis_url=redis_server.url, query_max_backlog=5,
                             query_stream_max_len=8, query_stream=f"bp:{uuid.uuid4().hex[:8]}")


def test_a_full_backlog_refuses_new_requests_at_once(settings, redis_server):
    r = redis_server.client()
    for n in range(settings.query_max_backlog):
        r.xadd(settings.query_stream, {"id": f"waiting-{n}", "req": "{}"})
    client = SearchClient(settings=settings)
    started = time.monotonic()
    with pytest.raises(Overloaded) as info:
        client.search(text="a coat", timeout=30)
    assert time.monotonic() - started < 5, "an overloaded request waited for its deadline"
    assert info.value.code == "overloaded" and info.value.retry_after >= 1
    assert r.xlen(settings.query_stream) == settings.query_max_backlog  # not added

    async def via_async():
        aclient = AsyncSearchClient(settings=settings)
        try:
            with pytest.raises(Overloaded):
                await aclient.search(image=b"\x89PNG", timeout=30)
            with pytest.raises(Overloaded):
                await aclient.op("stats", timeout=30)
        finally:
            await aclient.close()

    asyncio.run(via_async())
    r.xtrim(settings.query_stream, maxlen=0)
    with pytest.raises(SearchTimeout):  # room again: queued, then no worker answers
        client.search(text="a coat", timeout=0.3)
    client.close()


def test_a_caller_that_gives_up_deletes_its_entry(settings, redis_server):
    r = redis_server.client()
    client = SearchClient(settings=settings)
    for _ in range(3):
        with pytest.raises(SearchTimeout):
            client.search(image=b"\x89PNG" + b"\0" * 500_000, timeout=0.3)
    assert r.xlen(settings.query_stream) == 0, "timed-out requests (and their images) stayed in Redis"
    client.close()


def test_the_stream_is_capped(settings, redis_server):
    """The cap is the net under the backlog check (concurrent callers may pass it together):
    the add script always trims with MAXLEN ~ (whole stream nodes, 100 entries by default)."""
    r = redis_server.client()
    add = r.register_script(ADD_SCRIPT)
    for n in range(400):
        assert add(keys=[settings.query_stream], args=[10**6, 10, "id", f"e{n}", "req", "{}"]) is not None
    length = r.xlen(settings.query_stream)
    assert length <= 10 + 100, length
