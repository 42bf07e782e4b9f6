"""Answer a batch of validated requests with one encoder call per modality.

Concurrent requests are cheap to answer together: all text queries go through ONE
``encode_texts`` call, all image queries through ONE ``encode_images`` call, and requests
that share k, filter and exclusions go to Milvus in ONE search. Requests for several
channels (or with ``must`` words) go through :meth:`SearchService.search_many`, which
likewise encodes the whole batch with one call per model, then searches and fuses each.

Isolation: every request gets its own reply, and one request's failure never changes
another's answer. Per-request work (fetch, decode, lookup) fails alone; a batched step
(an encoder call, a shared Milvus search) that fails is repeated one request at a time
(:func:`query.isolation.run_isolated`), so only the guilty request gets the error. Errors
map to reply codes by type (:meth:`Reply.failed`), never by their text. Nothing here knows
about Redis.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from common.errors import QueryError
from common.settings import Settings
from query.fusion import FusedHit
from query.isolation import run_isolated
from query.protocol import SERVER_ERROR, Reply, Request
from query.search import Query, SearchService

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """A request on its way through the batch: its vector and exclusions once known."""

    request: Request
    vector: object = None
    exclude: tuple[int, ...] = ()


class BatchSearcher:
    """Encodes and searches batches of requests with a warm :class:`SearchService`."""

    def __init__(self, service: SearchService, settings: Settings):
        self.service = service
        self.settings = settings

    def warm(self) -> None:
        """Run every code path once (tokenizer, both towers, Milvus load) before serving."""
        from PIL import Image

        model = self.service.model
        vector = model.encode_texts(["warm up"])[0]
        model.encode_images([Image.new("RGB", (32, 32), "white")])
        self.service.search_vectors([vector], 1)
        if self.service.texts.exists():  # hybrid channels: the text model, OCR of query images
            from common.models.ocr import load_ocr

            self.service.text_encoder().encode(["warm up"])
            load_ocr(self.settings).predict([Image.new("RGB", (64, 64), "white")])

    def answer(self, requests: Sequence[Request]) -> dict[str, Reply]:
        """request id -> reply, for every request given (errors included); never raises."""
        replies: dict[str, Reply] = {}

        def failed(r: Request, exc: Exception) -> None:
            if not isinstance(exc, QueryError):
                log.error("request failed", exc_info=exc, extra={"request": r.id, "kind": r.kind})
            replies[r.id] = Reply.failed(r.id, exc)

        hybrid = [r for r in requests if not r.plain_clip]
        run_isolated(hybrid, lambda rs: self._hybrid(rs, replies), failed)
        plain = [r for r in requests if r.plain_clip]
        if plain:
            self._plain(plain, replies, failed)
        for r in requests:
            replies.setdefault(r.id, Reply.error(r.id, SERVER_ERROR, "no answer produced"))
        return replies

    def _hybrid(self, requests: Sequence[Request], replies: dict[str, Reply]) -> None:
        """Several channels and/or must words: one search_many call for all of them."""
        queries = [Query("image" if r.kind == "image_uri" else r.kind, text=r.text, image=r.image,
                         image_uri=r.image_uri, like=r.like, k=r.k, filter_expr=r.filter_expr,
                         channels=r.channels, must=r.must) for r in requests]
        for r, result in zip(requests, self.service.search_many(queries), strict=True):
            replies[r.id] = Reply.failed(r.id, result) if isinstance(result, Exception) else Reply(r.id, True, result)

    def _plain(self, requests: Sequence[Request], replies: dict[str, Reply], failed) -> None:
        """The CLIP channel alone: batched encoder calls, then one Milvus search per group."""
        pending: dict[str, _Pending] = {}
        texts = [r for r in requests if r.kind == "text"]

        def encode_texts(rs: Sequence[Request]) -> None:
            for r, v in zip(rs, self.service.model.encode_texts([r.text for r in rs]), strict=True):
                pending[r.id] = _Pending(r, v)

        run_isolated(texts, encode_texts, failed)
        decoded: dict[str, object] = {}
        for r in requests:
            try:
                if r.kind in ("image", "image_uri"):
                    data = r.image
                    if r.kind == "image_uri":
                        from query.fetch import fetch_query_image

                        data = fetch_query_image(r.image_uri or "", self.settings)
                    decoded[r.id] = self.service.decode_query(data)
                elif r.kind == "like":
                    row = self.service.lookup(r.like)
                    pending[r.id] = _Pending(r, row["clip"], (int(row["id"]),))
            except Exception as exc:
                failed(r, exc)

        def encode_images(rs: Sequence[Request]) -> None:
            vectors = self.service.model.encode_images([decoded[r.id] for r in rs])
            for r, v in zip(rs, vectors, strict=True):
                pending[r.id] = _Pending(r, v)

        run_isolated([r for r in requests if r.id in decoded], encode_images, failed)
        groups: dict[tuple, list[_Pending]] = defaultdict(list)
        for r in requests:  # in request order, so a batch's answers do not depend on dict order
            p = pending.get(r.id)
            if p is not None and r.id not in replies:
                groups[(r.k, r.filter_expr, p.exclude)].append(p)
        for (k, expr, exclude), members in groups.items():
            def search(ms: Sequence[_Pending], k=k, expr=expr, exclude=exclude) -> None:
                results = self.service.search_vectors([m.vector for m in ms], k, list(exclude), expr)
                for m, hits in zip(ms, results, strict=True):
                    fused = [FusedHit(h.id, h.uri, h.score, {"clip": {"rank": n, "score": round(h.score, 6)}})
                             for n, h in enumerate(hits, 1)]
                    replies[m.request.id] = Reply(m.request.id, True, fused)

            run_isolated(members, search, lambda m, exc: failed(m.request, exc))
