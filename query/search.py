"""The search service: encode a query with the collection's own model, search, rank.

The model is taken from what the collection recorded when it was built, never from the
current settings, so a query vector can never come from a different model than the
indexed vectors (the same holds for the text model of the ``texts`` collection).

:meth:`SearchService.search_many` is the one path every search takes: it runs the requested
channels (one registry, :mod:`query.channels`: ``clip``, ``phash``, ``bm25``, ``dense``) over
a batch of queries with one encoder call per model and one store call per group of queries
that can share it, fuses each query's channels by RRF (:mod:`query.fusion`) and returns
:class:`FusedHit` s with per-channel evidence. :meth:`SearchService.search` is one query of
it; ``search_text``/``search_image``/``search_like`` are the clip channel alone, as plain hits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from common.errors import BadQueryImage, ImageError, ModelMismatchError, QueryError, QueryNotFound, QueryTooLarge
from common.images import decode_query_image
from common.models.clip import ClipModel, load_clip
from common.settings import Settings, parse_weights
from common.store import Hit, ImageStore
from common.texts import TextStore
from query.channels import Channel, Query, build_channels
from query.fusion import CONFIDENCE_DEPTH, FusedHit, fuse
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
URI_WINDOW = 32  # fused hits whose uris are looked up at a time (see _answer)


class SearchService:
    """text->image, image->image and more-like-this search over one collection.

    ``collection`` is the images alias or versioned collection to search (default: the
    configured alias); the texts searched with it are those of ``settings.collection``."""

    def __init__(self, settings: Settings, collection: str | None = None):
        self.settings = settings
        self.store = ImageStore(settings, collection)
        self.recorded = self.store.model_spec()  # CollectionNotFoundError now, not at the first query
        self._model: ClipModel | None = None
        self._model_lock = threading.Lock()
        # texts pair with the alias callers name (``settings.collection``), also when this
        # service is bound to the versioned collection behind it (the query worker does that)
        self._texts = TextStore(settings, settings.collection)
        self._text_encoder = None
        self._lock = threading.Lock()
        self.channels: dict[str, Channel] = build_channels(self)
        self._weights = parse_weights(settings.fusion_weights)
        self._tiers = {name: c.tier for name, c in self.channels.items() if c.tier is not None}

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
        """Answer several queries, channel by channel over the whole batch (one CLIP text call,
        one CLIP image call, one dense-text call; one Milvus search per group of queries that
        share limit, filter and exclusions); per query its hits or its error.

        A query's error is its own: preparing (decode, OCR, lookup) and answering (fusion,
        must, uris) run per query, and a channel's batched step (encode and search) that
        fails is repeated one query at a time (:func:`query.isolation.run_isolated`), so only
        the query that broke it gets the error. QueryError is the caller's fault; any other exception is
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
        for channel in self.channels.values():
            run_isolated([n for n in live if out[n] is None and channel.name in queries[n].channels],
                         lambda ns, channel=channel: self._run_channel(channel, [queries[n] for n in ns]), failed)
        for n in live:
            if out[n] is None:
                try:
                    out[n] = self._answer(queries[n])
                except Exception as exc:
                    failed(n, exc)
        return out  # type: ignore[return-value]

    @staticmethod
    def _run_channel(channel: Channel, queries: Sequence[Query]) -> None:
        """Encode (one call per model), search (one call per group), keep each query's evidence."""
        channel.encode(queries)
        for q, hits in zip(queries, channel.search(queries), strict=True):
            q.found[channel.name] = channel.evidence(q, hits)

    def _prepare(self, q: Query) -> None:
        """Validate, decode the image or look up the indexed one, find the query's text."""
        check_k(q.k)
        q.channels = resolve_channels(q.kind, q.channels)
        q.must = check_must(q.must)
        q.depth = min(MAX_K, max(200, 10 * q.k) if q.must else max(CONFIDENCE_DEPTH, 3 * q.k))
        texts_wanted = any(self.channels[c].reads_text for c in q.channels)
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
            if texts_wanted and min(q.pil.size) >= self.settings.ocr_min_side and self.texts.exists():
                # the query image's own text (a label, a code) is searched in the indexed texts;
                # OCR loads only for an image big enough to hold a readable line
                from common.models.ocr import load_ocr

                q.query_text = " ".join(ln.text for ln in load_ocr(self.settings).predict([q.pil])[0])
        elif q.kind == "like":
            q.row = self.lookup(q.like)
            q.exclude = [int(q.row["id"])]
            if texts_wanted and self.texts.exists():
                q.query_text = " ".join(r["text"] for r in self.texts.rows_of(q.exclude[0]) if r["kind"] == "ocr")
        else:
            raise QueryError(f"unknown query kind {q.kind!r}")

    def _answer(self, q: Query) -> list[FusedHit]:
        """Fuse the query's channels (each one asked for is there, empty or not), apply
        ``must``, find the URIs the text channels do not know, cut to k."""
        found = {name: q.found.get(name, []) for name in self.channels if name in q.channels}
        uris = q.uris
        fused = fuse(found, self._weights, self.settings.fusion_rrf_k, tiers=self._tiers,
                     method=self.settings.fusion)
        if q.must:
            keep = self.texts.images_containing([i for i, _, _ in fused], q.must)
            fused = [f for f in fused if f[0] in keep]
        # text channels know image ids only: their uris come from `images`, where the caller's
        # filters apply too (and texts of images no longer indexed drop out). Looked up in
        # rank order, a window at a time, until k are known: the fused list holds every hit
        # of every channel (hundreds), the answer only k.
        out: list[FusedHit] = []
        pos = 0
        while len(out) < q.k and pos < len(fused):  # windows are disjoint: each id is asked once
            window = fused[pos:pos + max(q.k - len(out), URI_WINDOW)]
            pos += len(window)
            missing = [i for i, _, _ in window if i not in uris]
            if missing:
                uris.update(self.store.uris(missing, q.filter_expr))
            out.extend(FusedHit(i, uris[i], score, evidence) for i, score, evidence in window if i in uris)
        return out[:q.k]

    def warm(self, channels: Sequence[str] | None = None) -> list[str]:
        """Load and run once what ``channels`` need (default: every channel this collection
        serves; the text channels only when it has texts), OCR of query images included when
        a text channel is warmed, so that the first answer is as fast as the tenth. Returns
        the channels warmed."""
        has_texts = self.texts.exists()
        names = list(channels) if channels is not None else [
            n for n, c in self.channels.items() if has_texts or not c.reads_text]
        for name in names:
            self.channels[name].warm()
        if has_texts and any(self.channels[n].reads_text for n in names):
            from common.models.ocr import load_ocr

            load_ocr(self.settings).warm()  # an image query's own text: detector and recogniser
        return names

    @property
    def model(self) -> ClipModel:
        """The CLIP model the collection was built with, loaded when a query first needs it
        (a BM25 query never does) and checked against the digest the collection recorded."""
        model = self._model
        if model is None:
            with self._model_lock:
                if self._model is None:
                    recorded = self.recorded
                    loaded = load_clip(recorded.name, recorded.weights, self.settings)
                    if loaded.spec.digest != recorded.digest or loaded.spec.dim != recorded.dim:
                        raise ModelMismatchError(
                            f"collection {self.store.alias!r} was built with {recorded.label()}, but those "
                            f"weights now load as {loaded.spec.label()}: the checkpoint changed since "
                            "indexing; re-index or restore the original weights")
                    self._model = loaded
                model = self._model
        return model

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

    # -- plain CLIP searches (the same path: the clip channel alone) -------------------------
    def search_text(self, text: str, k: int = 10, filter_expr: str = "") -> list[Hit]:
        return self._plain(self.search(text=text, k=k, filter_expr=filter_expr, channels=["clip"]))

    def search_image(self, image: bytes, k: int = 10, filter_expr: str = "") -> list[Hit]:
        """Search by an image given as bytes (a caller with a file reads it itself).

        ``filter_expr`` (here and below) is a Milvus expression compiled by ``query.filters``
        from structured filters; callers outside this package never write one."""
        return self._plain(self.search(image=image, k=k, filter_expr=filter_expr, channels=["clip"]))

    def search_like(self, ref: int | str, k: int = 10, filter_expr: str = "") -> list[Hit]:
        """Images like an indexed one (by id or URI); the image itself is left out."""
        return self._plain(self.search(like=ref, k=k, filter_expr=filter_expr, channels=["clip"]))

    @staticmethod
    def _plain(hits: list[FusedHit]) -> list[Hit]:
        return [Hit(h.id, h.uri, h.score) for h in hits]

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
