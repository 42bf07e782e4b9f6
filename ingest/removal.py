"""Removing images from the index: the ONE way rows of deleted objects leave Milvus.

An image has rows in two places: its row in ``images`` and its OCR/caption/tag rows in
``texts`` (keyed by ``image_id``). Every deletion (re-index of removed objects, operator
commands) goes through :func:`remove_images`, so no path can leave orphaned text rows.

What counts as removed is scoped to what was listed (:func:`ingest.listing.removed_pages`):
only rows whose URI lies under the re-indexed source root (and matches its ``--include``
patterns) can be removed, so a re-index of ``s3://bucket/shop/`` never touches
``s3://bucket/archive/``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from common.settings import Settings
from common.store import ImageStore
from common.texts import delete_texts

log = logging.getLogger(__name__)


def remove_images(settings: Settings, ids: Iterable[int]) -> int:
    """Delete images by id from the configured ``images`` alias AND their text rows.

    Text rows are removed first: a crash in between leaves an image without texts (the next
    re-index finds it again and removes it), never texts without an image. Returns how many
    image ids were removed.
    """
    ids = sorted({int(i) for i in ids})
    if not ids:
        return 0
    store = ImageStore(settings)
    delete_texts(settings, ids, store.alias)
    store.delete(ids)
    log.info("removed images", extra={"collection": store.alias, "count": len(ids)})
    return len(ids)
