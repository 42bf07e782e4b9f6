"""The query worker follows its alias (real Redis, milvus-lite server, the bundled model),
looking it up at most every ``query_alias_check_ms``: the lookup is one Milvus call a batch."""

from __future__ import annotations

import uuid

import pytest

from common.store import ImageStore, milvus_client, resolve_alias
from query.worker import QueryWorker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_the_worker_moves_with_its_alias_once_the_check_interval_has_passed(queue_settings):
    client = milvus_client(queue_settings)
    first = resolve_alias(client, queue_settings.collection)
    alias = f"follow_{uuid.uuid4().hex[:8]}"
    client.create_alias(first, alias)
    other = ImageStore(queue_settings.with_overrides(collection=f"{alias}_next"))
    second = other.ensure(ImageStore(queue_settings).model_spec())  # same model, no rows
    settings = queue_settings.with_overrides(collection=alias, query_alias_check_ms=60_000)
    worker = QueryWorker(settings)
    try:
        worker.start()
        assert worker.serving == first
        ImageStore(settings).point_alias(second)
        assert worker._follow_alias() is worker.searcher and worker.serving == first  # not looked up yet
        worker.settings = settings.with_overrides(query_alias_check_ms=0)  # the interval has passed
        worker._follow_alias()
        assert worker.serving == second
        assert worker.searcher.service.store.alias == second
    finally:
        client.drop_alias(alias)
        client.drop_alias(f"{alias}_next")
        client.drop_collection(second)
