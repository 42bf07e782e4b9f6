"""The search service: encode a query with the collection's own model, search, rank.

The model is taken from what the collection recorded when it was built, never from the
current settings, so a query vector can never come from a different model than the
indexed vectors (the same holds for the text model of the ``texts`` collection).

:meth:`SearchService.search` is the one entry point for hybrid search: it runs the
requested channels (``clip``, ``bm25``, ``dense``, ``phash``), fuses them by RRF
(:mod:`query.fusion`) and returns :class:`FusedHit` s with per-channel evidence.
:meth:`SearchService.search_many` does the same for a batch of queries with one encoder
call per model (the query worker's dynamic batching). ``search_text``/``search_image``/
``search_like`` are the plain CLIP searches.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from common.errors import BadQueryImage, ImageError, ModelMismatchError, QueryError, QueryNotFound, QueryTooLarge
from common.images import decode_query_image
from common.models.clip import ClipModel, load_clip
from common.settings import Settings, parse_weights
from common.store import Hit, ImageStore
from common.texts import TextStore
from query.duplicates import search_phash
from query.fusion import ChannelHit, FusedHit, fuse
from query.isolation import run_isolated
from query.vocabulary import (  # noqa: F401  (re-exported: callers import them from here too)
    CHANNELS,
    DEFAULT_CHANNELS,
    MAX_K,
    MAX_MUST,
    MAX_TEXT_CHARS,
    MAX_URI_CHARS,
    check_image_id,
    check_k,
    check_must,
    check_text,
    resolve_channels,
)

log = logging.getLogger(__name__)


@dataclass
class Query:
    """One hybrid query on its way through :meth:`SearchService.search_many`."""

    kind: str  # text | image | like (an image_uri query is an image query)
    text: str | None = None
    image: bytes | None = None
    like: int | str | None = None
    image_uri: str | None = None  # s3:// URI in an allowed bucket, fetched here (query.fetch)
    k: int = 10
    filter_expr: str = ""
    channels: Sequence[str] | None = None
    must: Sequence[str] | None = None
    # filled while answering
    pil: object = None
    row: dict | None = None
    query_text: str = ""
    vectors: dict[str, object] = field(default_factory=dict)
    exclude: list[int] = field(default_factory=list)


class SearchService:
    """text->image, image->image and more-like-this search over one collection.

    ``collection`` is the images alias or versioned collection to search (default: the
    configured alias); the texts searched with it are those of ``settings.collection``."""

    def __init__(self, settings: Settings, collection: str | None = None):
        self.settings = settings
        self.store = ImageStore(settings, collection)
        recorded = self.store.model_spec()
        self.model: ClipModel = load_clip(recorded.name, recorded.weights, settings)
        if self.model.spec.digest != recorded.digest or self.model.spec.dim != recorded.dim:
            raise ModelMismatchError(
                f"collection {self.store.alias!r} was built with {recorded.label()}, but those "
                f"weights now load as {self.model.spec.label()}: the checkpoint changed since "
                "indexing; re-index or restore the original weights")
        # texts pair with the alias callers name (``settings.collection``), also when this
        # service is bound to the versioned collection behind it (the query worker does that)
        self._texts = TextStore(settings, settings.collection)
        self._text_encoder = None
        self._lock = threading.Lock()

    # -- hybrid search ---------------------------------------------------------------------
    def search(self, text: str | None = None, image: bytes | None = None, like: int | str | None = None,
               k: int = 10, filter_expr: str = "", channels: Sequence[str] | None = None,
               must: Sequence[str] | None = None, image_uri: str | None = None) -> list[FusedHit]:
        """Hybrid search by exactly one of text, image (bytes), image_uri (an ``s3://`` URI in
        an allowed bucket) or like (an indexed image id or URI), fused over ``channels``
        (None: the defaults of the kind). Nothing here reads a local file: a caller that
        has one reads it itself (the CLI does) and passes the bytes.

        ``must`` keeps only images whose indexed texts (OCR lines, captions, tags) contain
        every word (Milvus TEXT_MATCH on analysed tokens: case-insensitive, split at
        non-word characters). ``filter_expr`` comes from ``query.filters`` only.
        """
        given = [n for n, v in (("text", text), ("image", image), ("image_uri", image_uri), ("like", like))
                 if v is not None]
        if len(given) != 1:
            raise QueryError(f"give exactly one of text, image, image_uri, like (got {', '.join(given) or 'none'})")
        query = Query("image" if given[0] == "image_uri" else given[0], text=text, image=image, like=like, k=k,
                      filter_expr=filter_expr, channels=channels, must=must, image_uri=image_uri)
        result = self.search_many([query])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def search_many(self, queries: Sequence[Query]) -> list[list[FusedHit] | Exception]:
        """Answer several hybrid queries: one CLIP text call, one CLIP image call and one
        dense-text call for the whole batch; per query its hits or its error.

        A query's error is its own: preparing (decode, OCR, lookup) and answering (Milvus
        searches, fusion) run per query, and a batched encoder call that fails is repeated
        one query at a time (:func:`query.isolation.run_isolated`), so only the query that
        broke it gets the error. QueryError is the caller's fault; any other exception is
        a server fault, logged here."""
        out: list[list[FusedHit] | Exception | None] = [None] * len(queries)

        def failed(n: int, exc: Exception) -> None:
            if not isinstance(exc, QueryError):
                log.error("query failed", exc_info=exc, extra={"kind": queries[n].kind})
            out[n] = exc

        live: list[int] = []
        for n, q in enumerate(queries):
            try:
                self._prepare(q)
                live.append(n)
            except Exception as exc:
                failed(n, exc)
        encoded: list[int] = []
        run_isolated(live, lambda ns: (self._encode([queries[n] for n in ns]), encoded.extend(ns)), failed)
        for n in encoded:
            if out[n] is None:
                try:
                    out[n] = self._answer(queries[n])
                except Exception as exc:
                    failed(n, exc)
        return out  # type: ignore[return-value]

    def _prepare(self, q: Query) -> None:
        """Validate, decode the image or look up the indexed one, find the query's text."""
        check_k(q.k)
        q.channels = resolve_channels(q.kind, q.channels)
        q.must = check_must(q.must)
        texts_wanted = {"bm25", "dense"} & set(q.channels)
        if q.kind == "text":
            if not isinstance(q.text, str):
                raise QueryError("a text query must be a string")
            check_text(q.text, "the text query")
            q.query_text = q.text.strip()
            if not q.query_text:
                raise QueryError("empty text query")
            if len(q.query_text) > MAX_TEXT_CHARS:
                raise QueryError(f"text query longer than {MAX_TEXT_CHARS} characters")
        elif q.kind == "image":
            if q.image_uri is not None:
                from query.fetch import fetch_query_image

                q.image = fetch_query_image(q.image_uri, self.settings)
            q.pil = self.decode_query(q.image)
            if texts_wanted and self.texts.exists():
                # the query image's own text (a label, a code) is searched in the indexed texts
                from common.models.ocr import load_ocr

                q.query_text = " ".join(ln.text for ln in load_ocr(self.settings).predict([q.pil])[0])
        elif q.kind == "like":
            q.row = self.lookup(q.like)
            q.exclude = [int(q.row["id"])]
            if texts_wanted and self.texts.exists():
                q.query_text = " ".join(r["text"] for r in self.texts.rows_of(q.exclude[0]) if r["kind"] == "ocr")
        else:
            raise QueryError(f"unknown query kind {q.kind!r}")

    def _encode(self, queries: Sequence[Query]) -> None:
        """One encoder call per model for every query of the batch that needs it."""
        texts = [q for q in queries if q.kind == "text" and "clip" in q.channels]
        if texts:
            for q, v in zip(texts, self.model.encode_texts([q.query_text for q in texts])):
                q.vectors["clip"] = v
        images = [q for q in queries if q.kind == "image" and "clip" in q.channels]
        if images:
            for q, v in zip(images, self.model.encode_images([q.pil for q in images])):
                q.vectors["clip"] = v
        dense = [q for q in queries if "dense" in q.channels and q.query_text]
        if dense and self.texts.exists():
            for q, v in zip(dense, self.text_encoder().encode([q.query_text for q in dense])):
                q.vectors["dense"] = v
        for q in queries:  # an image query's phash is searched with its variants (query.duplicates)
            if q.kind == "like":
                q.vectors["clip"] = q.row["clip"]
                if "phash" in q.channels:
                    q.vectors["phash"] = self.store.client.query(
                        self.store.alias, filter=f"id == {q.exclude[0]}", output_fields=["phash"])[0]["phash"]

    def _answer(self, q: Query) -> list[FusedHit]:
        depth = min(MAX_K, max(200, 10 * q.k) if q.must else max(50, 3 * q.k))
        found: dict[str, list[ChannelHit]] = {}
        uris: dict[int, str] = {}
        for name in ("clip", "phash"):
            if name in q.channels:
                if name == "phash" and q.kind == "image":  # the query's hash and its crop/rotation variants
                    hits = search_phash(self.store, q.pil, depth, q.filter_expr, q.exclude)
                else:
                    hits = self.store.search([q.vectors[name]], depth, field=name, exclude_ids=q.exclude,
                                             filter_expr=q.filter_expr)[0]
                if name == "phash":
                    hits = [h for h in hits if h.score >= self.settings.phash_min_score]
                uris.update({h.id: h.uri for h in hits})
                found[name] = [ChannelHit(h.id, h.score) for h in hits]
        skip = set(q.exclude)
        if "bm25" in q.channels:
            rows = self.texts.search_bm25([q.query_text], depth * 3)[0] if q.query_text else []
            found["bm25"] = [ChannelHit(r.image_id, r.score, r.text, r.kind) for r in rows if r.image_id not in skip]
        if "dense" in q.channels:
            rows = self.texts.search_dense([q.vectors["dense"]], depth * 3)[0] if "dense" in q.vectors else []
            found["dense"] = [ChannelHit(r.image_id, r.score, r.text, r.kind) for r in rows if r.image_id not in skip]
        fused = fuse(found, parse_weights(self.settings.fusion_weights), self.settings.fusion_rrf_k,
                     tiers={"phash": self.settings.phash_tier_score}, method=self.settings.fusion)
        if q.must:
            keep = self.texts.images_containing([i for i, _, _ in fused], q.must)
            fused = [f for f in fused if f[0] in keep]
        # text channels know image ids only: their uris come from `images`, where the caller's
        # filters apply too (and texts of images no longer indexed drop out)
        missing = [i for i, _, _ in fused if i not in uris]
        if missing:
            uris.update(self.store.uris(missing, q.filter_expr))
            fused = [f for f in fused if f[0] in uris]
        return [FusedHit(i, uris[i], score, evidence) for i, score, evidence in fused[:q.k]]

    @property
    def texts(self) -> TextStore:
        return self._texts

    def text_encoder(self):
        """The text model the texts collection was built with (loaded once)."""
        from common.models.text import DEFAULT_LABEL, load_text_encoder

        with self._lock:
            if self._text_encoder is None:
                label, dim = self.texts.text_model() or (DEFAULT_LABEL, 0)
                enc = load_text_encoder(self.settings.with_overrides(text_model="" if label == DEFAULT_LABEL
                                                                     else label))
                if dim and enc.dim != dim:
                    raise ModelMismatchError(f"texts of {self.store.alias!r} have {dim}-d vectors, but text model "
                                             f"{label!r} now gives {enc.dim}-d")
                self._text_encoder = enc
            return self._text_encoder

    def decode_query(self, data: bytes | None):
        """A caller's image bytes -> a small upright RGB picture (query limits, one downscale)."""
        if not isinstance(data, bytes | bytearray):
            raise QueryError("a query image must be given as bytes (nothing here reads files)")
        limit = min(self.settings.max_image_bytes, self.settings.query_max_image_bytes)
        try:
            return decode_query_image(bytes(data), limit, self.settings.query_max_image_pixels).image
        except ImageError as exc:
            if exc.reason in ("too_large", "too_many_pixels"):
                raise QueryTooLarge(f"query image too large ({exc.reason}): {exc.message}") from None
            raise BadQueryImage(exc.reason, exc.message) from None

    # -- plain CLIP searches -----------------------------------------------------------------
    def search_text(self, text: str, k: int = 10, filter_expr: str = "") -> list[Hit]:
        check_text(text, "the text query")
        text = (text or "").strip()
        if not text:
            raise QueryError("empty text query")
        if len(text) > MAX_TEXT_CHARS:
            raise QueryError(f"text query longer than {MAX_TEXT_CHARS} characters")
        return self._search(self.model.encode_texts([text])[0], k, filter_expr=filter_expr)

    def search_image(self, image: bytes, k: int = 10, filter_expr: str = "") -> list[Hit]:
        """Search by an image given as bytes (a caller with a file reads it itself).

        ``filter_expr`` (here and below) is a Milvus expression compiled by ``query.filters``
        from structured filters; callers outside this package never write one."""
        return self._search(self.model.encode_images([self.decode_query(image)])[0], k, filter_expr=filter_expr)

    def search_like(self, ref: int | str, k: int = 10, filter_expr: str = "") -> list[Hit]:
        """Images like an indexed one (by id or URI); the image itself is left out."""
        row = self.lookup(ref)
        return self._search(row["clip"], k, exclude=[int(row["id"])], filter_expr=filter_expr)

    def lookup(self, ref: int | str) -> dict:
        """The indexed row (with its vector) for an image id or URI; QueryNotFound if absent.

        A string of ASCII digits is an id (the CLI's ``--like 123``); anything else that is
        not a URI is refused before Milvus sees it (``²`` is a digit to ``str.isdigit``)."""
        if isinstance(ref, str):
            check_text(ref, "--like")
            text = ref.strip()
            if text.isascii() and text.isdecimal():
                ref = int(text)
            elif "://" not in text or len(text) > MAX_URI_CHARS or any(ord(ch) < 32 for ch in text):
                raise QueryError(f"--like takes an image id (a number) or an indexed URI, got {text[:80]!r}")
        if isinstance(ref, str):
            row = self.store.get_by_uri(ref.strip(), with_vector=True)
        else:
            row = self.store.get(check_image_id(ref, "--like"), with_vector=True)
        if row is None:
            shown = ref if isinstance(ref, int) else ref.strip()[:200]
            raise QueryNotFound(f"no indexed image with id or uri {shown!r} in {self.store.alias!r}")
        return row

    def _search(self, vector, k: int, exclude: list[int] | None = None, filter_expr: str = "") -> list[Hit]:
        return self.search_vectors([vector], k, exclude, filter_expr)[0]

    def search_vectors(self, vectors, k: int, exclude: list[int] | None = None,
                       filter_expr: str = "") -> list[list[Hit]]:
        """One Milvus search for several query vectors that share k, exclusions and filter
        (the query worker batches concurrent requests through here)."""
        check_k(k)
        return self.store.search(list(vectors), k, exclude_ids=exclude or (), filter_expr=filter_expr)
