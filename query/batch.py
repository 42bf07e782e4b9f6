"""Answer a batch of validated requests with one encoder call per modality.

Concurrent requests are cheap to answer together: all text queries go through ONE
``encode_texts`` call, all image queries through ONE ``encode_images`` call, and requests
that share k, filter and exclusions go to Milvus in ONE search. Requests for several
channels (or with ``must`` words) go through :meth:`SearchService.search_many`, which
likewise encodes the whole batch with one call per model, then searches and fuses each. One bad request (an
undecodable image, an unknown id) gets its own error reply; the rest of the batch is
answered normally. Nothing here knows about Redis.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from common.errors import ImageError, ImgsearchError, QueryError
from common.images import decode_image
from common.settings import Settings
from query.fusion import FusedHit
from query.protocol import BAD_REQUEST, NOT_FOUND, SERVER_ERROR, Reply, Request
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
        """request id -> reply, for every request given (errors included)."""
        replies: dict[str, Reply] = {}
        pending: list[_Pending] = []
        hybrid = [r for r in requests if not r.plain_clip]
        if hybrid:
            self._guard(hybrid, replies, lambda: self._hybrid(hybrid, replies))
        requests = [r for r in requests if r.plain_clip]
        texts = [r for r in requests if r.kind == "text"]
        images = [r for r in requests if r.kind in ("image", "image_uri")]
        likes = [r for r in requests if r.kind == "like"]
        if texts:
            self._guard(texts, replies, lambda: pending.extend(
                _Pending(r, v) for r, v in zip(texts, self.service.model.encode_texts([r.text for r in texts]))))
        if images:
            self._guard(images, replies, lambda: pending.extend(self._encode_images(images, replies)))
        for r in likes:
            try:
                row = self.service.lookup(r.like)
            except QueryError as exc:
                code = NOT_FOUND if "no indexed image" in str(exc) else BAD_REQUEST
                replies[r.id] = Reply.error(r.id, code, str(exc))
                continue
            except Exception as exc:  # Milvus down, ...: the caller learns it was not its fault
                log.exception("lookup failed", extra={"request": r.id})
                replies[r.id] = Reply.error(r.id, SERVER_ERROR, f"lookup failed: {exc}")
                continue
            pending.append(_Pending(r, row["clip"], (int(row["id"]),)))
        self._search(pending, replies)
        return replies

    def _hybrid(self, requests: Sequence[Request], replies: dict[str, Reply]) -> None:
        """Several channels and/or must words: one search_many call for all of them."""
        queries, asked = [], []
        for r in requests:
            query = Query("image" if r.kind == "image_uri" else r.kind, text=r.text, like=r.like, k=r.k,
                          filter_expr=r.filter_expr, channels=r.channels, must=r.must)
            if r.kind == "image_uri":
                try:
                    query.image = self._fetch(r.image_uri or "")
                except (ImageError, ImgsearchError) as exc:
                    replies[r.id] = Reply.error(r.id, BAD_REQUEST, getattr(exc, "message", None) or str(exc))
                    continue
            elif r.kind == "image":
                query.image = r.image
            queries.append(query)
            asked.append(r)
        for r, result in zip(asked, self.service.search_many(queries)):
            if isinstance(result, Exception):
                code = NOT_FOUND if "no indexed image" in str(result) else BAD_REQUEST
                replies[r.id] = Reply.error(r.id, code, str(result))
            else:
                replies[r.id] = Reply(r.id, True, result)

    def _encode_images(self, requests: Sequence[Request], replies: dict[str, Reply]) -> list[_Pending]:
        decoded, ok = [], []
        for r in requests:
            try:
                data = r.image if r.kind == "image" else self._fetch(r.image_uri or "")
                img = decode_image(data, min(self.settings.max_image_bytes, self.settings.query_max_image_bytes),
                                   self.settings.max_image_pixels)
            except ImageError as exc:
                replies[r.id] = Reply.error(r.id, BAD_REQUEST, f"bad query image ({exc.reason}): {exc.message}")
                continue
            except ImgsearchError as exc:
                replies[r.id] = Reply.error(r.id, BAD_REQUEST, str(exc))
                continue
            decoded.append(img.image)
            ok.append(r)
        if not ok:
            return []
        vectors = self.service.model.encode_images(decoded)
        return [_Pending(r, v) for r, v in zip(ok, vectors)]

    def _fetch(self, uri: str) -> bytes:
        from common.sources import fetcher_for

        try:
            return fetcher_for(uri, self.settings).fetch(uri, self.settings.query_max_image_bytes)
        except ImageError:
            raise
        except Exception as exc:
            raise QueryError(f"cannot fetch query image {uri}: {exc}") from None

    def _search(self, pending: list[_Pending], replies: dict[str, Reply]) -> None:
        groups: dict[tuple, list[_Pending]] = defaultdict(list)
        for p in pending:
            groups[(p.request.k, p.request.filter_expr, p.exclude)].append(p)
        for (k, expr, exclude), members in groups.items():
            def run(members=members, k=k, expr=expr, exclude=exclude) -> None:
                results = self.service.search_vectors([m.vector for m in members], k, list(exclude), expr)
                for m, hits in zip(members, results):
                    fused = [FusedHit(h.id, h.uri, h.score, {"clip": {"rank": n, "score": round(h.score, 6)}})
                             for n, h in enumerate(hits, 1)]
                    replies[m.request.id] = Reply(m.request.id, True, fused)

            self._guard([m.request for m in members], replies, run)

    @staticmethod
    def _guard(requests: Sequence[Request], replies: dict[str, Reply], step) -> None:
        """Run one batched step; on failure every request in it gets an error reply."""
        try:
            step()
        except QueryError as exc:
            for r in requests:
                replies.setdefault(r.id, Reply.error(r.id, BAD_REQUEST, str(exc)))
        except Exception as exc:
            log.exception("batch step failed", extra={"requests": len(requests)})
            for r in requests:
                replies.setdefault(r.id, Reply.error(r.id, SERVER_ERROR, f"{type(exc).__name__}: {exc}"))
