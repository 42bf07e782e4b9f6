"""The ``texts`` collection: OCR lines, captions and tags of indexed images.

One row per piece of text: ``id`` (derived from image id + kind + position, so re-indexing
writes the same keys), ``image_id``, ``kind`` (ocr | caption | tag), ``position``, ``text``
(analyzer on; a Milvus BM25 function turns it into the ``sparse`` vector, so exact codes
and serial numbers are found), ``text_key`` (a hash of the text), ``confidence`` and
``box`` (OCR quadrilateral, empty for captions/tags).

The dense (sentence-transformers) vectors, which find paraphrases, live beside it in
``<physical>_vecs``: one row per *distinct* text, keyed by ``text_key``. Tags and captions
repeat across images ("handbag" on 10k images); stored per row, they were thousands of
identical vectors, which an HNSW graph cannot traverse (copies link only to each other and
rows outside them become unreachable) and which fill a FLAT scan with copies. A dense search
finds the best distinct texts, then the rows that carry them. Writing upserts rows first,
then their vectors; deleting an image's rows removes the vectors no row carries any more.
(Two writers racing on one text can leave a row without its vector until that text is
written again; a vector without rows is harmless: it matches no row.) Collections built
before this (a ``dense`` field on each row) are still read and written the old way.

Like ``images`` the physical collection is versioned (``<alias>_texts_v1``) behind the
alias ``<alias>_texts``, and records the text model that built it. Replacing an image's
texts deletes all its rows first, then upserts the new ones, so stale lines never remain.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from common import lite_search
from common.errors import ModelMismatchError
from common.settings import Settings
from common.store import PROP_PREFIX, UPSERT_ROWS, milvus_client
from common.vector_index import IndexTypes, add_vector_index, index_type_for, search_params

KINDS = ("ocr", "caption", "tag")
TEXT_MAX = 2048
BOX_LEN = 8
DELETE_IDS = 1000
ROWS_LIMIT = 16384  # Milvus' largest query window: rows fetched for one dense search's texts
TOKEN_RE = re.compile(r"\w+", re.UNICODE)
# Lucene's English stop words: EnglishAnalyzer.ENGLISH_STOP_WORDS_SET (the classic 33 of
# StopAnalyzer, org.apache.lucene.analysis.en), "no" and "not" included. Dropped from BM25
# *queries* only (IMGSEARCH_BM25_STOPWORDS); the indexed texts keep every word.
ENGLISH_STOP_WORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they",
    "this", "to", "was", "will", "with"))
STOP_WORD_SETS = {"english": ENGLISH_STOP_WORDS, "none": frozenset()}
_JOINER = "'\u2019."  # it's, U.S.: one token to the analyser (Unicode word rules), two to TOKEN_RE


def bm25_query(text: str, stop_words: frozenset[str] = ENGLISH_STOP_WORDS) -> str:
    """``text`` without its stop words (TOKEN_RE tokens, case-insensitive), for a BM25 query.

    A stop word shares nothing of a query's meaning, yet BM25 scores it like any term: a
    sign that shares only "for" and "on" with a paraphrase ranked first. Everything else of
    the text stays as it was, so the analyser splits the rest as before; a token joined to
    a word by an apostrophe or a period ("it's") is kept. If every token is a stop word
    ("to be or not to be") the text is returned unchanged: that query means those words."""
    if not stop_words:
        return text

    def drop(m: re.Match) -> str:
        if m.group().lower() not in stop_words:
            return m.group()
        before, after = text[max(m.start() - 2, 0):m.start()], text[m.end():m.end() + 2]
        joined = (len(before) == 2 and before[1] in _JOINER and before[0].isalnum()) or \
                 (len(after) == 2 and after[0] in _JOINER and after[1].isalnum())
        return m.group() if joined else " "

    kept = TOKEN_RE.sub(drop, text)
    return kept if TOKEN_RE.search(kept) else text


def query_words(text: str, stop_words: frozenset[str] = ENGLISH_STOP_WORDS) -> frozenset[str]:
    """The distinct lower-cased words of the BM25 query made of ``text`` (:func:`bm25_query`)."""
    return frozenset(t.lower() for t in TOKEN_RE.findall(bm25_query(text, stop_words)))


def words_coverage(words: frozenset[str], text: str | None) -> float:
    """The share of a BM25 query's distinct words (:func:`query_words`) that ``text`` holds, 0..1.

    Lucene's classic coordination factor (``coord``: matching terms / query terms). BM25
    ranks a text by the words it shares with the query, each weighed by its rarity, so a
    text sharing one rare word ("next") with an eight-word paraphrase stands as far above
    the texts sharing a common word as an exact match would; how much of the query it holds
    is what tells the two apart. Fusion weighs the ``bm25`` channel by its best hit's
    coverage (:mod:`query.fusion`). A query with no words covers nothing (0). The query's
    words are found once and passed in: a channel scores ~150 rows per query.
    """
    if not words:
        return 0.0
    return len(words.intersection(TOKEN_RE.findall((text or "").lower()))) / len(words)


def text_id(image_id: int, kind: str, position: int) -> int:
    """Stable positive int64 key of the ``position``-th text of ``kind`` of an image."""
    digest = hashlib.blake2b(f"{int(image_id)}:{kind}:{int(position)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1) or 1


@dataclass(frozen=True)
class TextItem:
    """A piece of text to store for an image (before it gets its vector)."""

    kind: str
    text: str
    confidence: float = 1.0
    box: tuple[float, ...] = ()


@dataclass(frozen=True)
class TextHit:
    """One matching text row, best first within its channel."""

    image_id: int
    kind: str
    text: str
    score: float


def text_key(text: str) -> int:
    """Stable positive int64 key of a text as stored (its first TEXT_MAX characters)."""
    digest = hashlib.blake2b(text[:TEXT_MAX].encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1) or 1


def texts_alias(collection: str) -> str:
    return f"{collection}_texts"


class TextStore:
    """The texts collection paired with the images alias ``settings.collection``."""

    def __init__(self, settings: Settings, collection: str | None = None):
        self.settings = settings
        self.alias = texts_alias(collection or settings.collection)
        self.client = milvus_client(settings)
        self._index_types = IndexTypes(self.client, self.alias)
        self._loaded: set[str] = set()
        self._layout: dict[str, str | None] = {}
        self._vec_index_types: IndexTypes | None = None  # physical name -> its vectors collection (None: legacy)

    def physical_name(self) -> str | None:
        answered, name = (lite_search.local_alias_target(self.settings.effective_milvus_uri(), self.alias)
                          if not self.settings.milvus_uri else (False, None))
        if not answered:  # a server: ask it
            if self.alias not in (self.client.list_aliases().get("aliases") or []):
                return None
            name = self.client.describe_alias(self.alias).get("collection_name")
        if name and name not in self._loaded:
            self._load(name)
            fields = {f["name"] for f in self.client.describe_collection(name).get("fields", [])}
            vectors = vectors_name(name) if "text_key" in fields else None
            if vectors is not None:
                self._load(vectors)
            self._layout[name] = vectors
            self._loaded.add(name)
        return name

    def _load(self, name: str) -> None:
        from pymilvus.client.types import LoadState

        if self.client.get_load_state(name).get("state") != LoadState.Loaded:
            self.client.load_collection(name)

    def vectors_collection(self) -> str | None:
        """The collection of distinct-text vectors (None: nothing yet, or a legacy layout)."""
        name = self.physical_name()
        return self._layout.get(name) if name else None

    def exists(self) -> bool:
        return self.physical_name() is not None

    def text_model(self) -> tuple[str, int] | None:
        """(label, dim) of the text model the collection was built with, or None if absent."""
        name = self.physical_name()
        if name is None:
            return None
        props = self.client.describe_collection(name).get("properties", {})
        return props.get(PROP_PREFIX + "text_model", ""), int(props.get(PROP_PREFIX + "text_dim", 0))

    def ensure(self, model_label: str, dim: int) -> str:
        """Create ``<alias>_v1`` + alias for this text model, or check the existing one matches."""
        name = self.physical_name()
        if name is not None:
            recorded = self.text_model()
            if recorded != (model_label, dim):
                raise ModelMismatchError(
                    f"text collection {self.alias!r} was built with text model {recorded}, not "
                    f"{(model_label, dim)}: set IMGSEARCH_TEXT_MODEL to that model or use another collection")
            return name
        existing = set(self.client.list_collections())
        version = 1
        while f"{self.alias}_v{version}" in existing:
            version += 1
        name = f"{self.alias}_v{version}"
        self._create(name, model_label, dim)
        try:
            self.client.create_alias(name, self.alias)
        except Exception:  # another process created the alias meanwhile: use theirs
            if self.physical_name() is None:
                raise
            return self.ensure(model_label, dim)
        return name

    def _create(self, name: str, model_label: str, dim: int) -> None:
        from pymilvus import DataType, Function, FunctionType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("image_id", DataType.INT64)
        schema.add_field("kind", DataType.VARCHAR, max_length=16)
        schema.add_field("position", DataType.INT32)
        schema.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX * 4, enable_analyzer=True,
                         enable_match=True, analyzer_params={"type": "standard"})
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("text_key", DataType.INT64)
        schema.add_field("confidence", DataType.FLOAT)
        schema.add_field("box", DataType.ARRAY, element_type=DataType.FLOAT, max_capacity=BOX_LEN)
        schema.add_function(Function(name="text_bm25", function_type=FunctionType.BM25,
                                     input_field_names=["text"], output_field_names=["sparse"]))
        index = self.client.prepare_index_params()
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        index.add_index("image_id", index_type="INVERTED")
        index.add_index("text_key", index_type="INVERTED")
        props = {PROP_PREFIX + "text_model": model_label, PROP_PREFIX + "text_dim": str(dim)}
        # The vectors first: a texts collection that exists always has its vectors beside it.
        vectors = vectors_name(name)
        if vectors not in self.client.list_collections():
            vschema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            vschema.add_field("id", DataType.INT64, is_primary=True)
            vschema.add_field("dense", DataType.FLOAT_VECTOR, dim=dim)
            vindex = self.client.prepare_index_params()
            add_vector_index(vindex, "dense", index_type_for(self.settings, self.client))
            self.client.create_collection(vectors, schema=vschema, index_params=vindex)
            self.client.alter_collection_properties(vectors, properties=props)
        self.client.create_collection(name, schema=schema, index_params=index)
        self.client.alter_collection_properties(name, properties=props)

    # -- rows ---------------------------------------------------------------------------
    def replace(self, image_id: int, items: Sequence[TextItem], vectors: Sequence[Sequence[float]]) -> int:
        """Make ``items`` the only texts of ``image_id``: delete its rows, then upsert the new."""
        return self.replace_many({int(image_id): (list(items), list(vectors))})

    def replace_many(self, per_image: dict[int, tuple[list[TextItem], list]], kinds: Sequence[str] = KINDS) -> int:
        """Replace the texts of ``kinds`` for several images (one delete, chunked upserts)."""
        if not per_image:
            return 0
        old_keys = self._delete_rows(per_image, kinds, want_keys=True)
        vectors_coll = self.vectors_collection()
        rows = []
        distinct: dict[int, list[float]] = {}
        for image_id, (items, vectors) in per_image.items():
            positions: dict[str, int] = {}
            for item, vec in zip(items, vectors):
                pos = positions.get(item.kind, 0)
                positions[item.kind] = pos + 1
                box = [float(v) for v in item.box][:BOX_LEN]
                row = {"id": text_id(image_id, item.kind, pos), "image_id": int(image_id), "kind": item.kind,
                       "position": pos, "text": item.text[:TEXT_MAX], "confidence": float(item.confidence),
                       "box": box}
                if vectors_coll is None:  # legacy layout: the vector on the row
                    row["dense"] = [float(v) for v in vec]
                else:
                    row["text_key"] = key = text_key(item.text)
                    distinct.setdefault(key, [float(v) for v in vec])
                rows.append(row)
        for start in range(0, len(rows), UPSERT_ROWS):
            self.client.upsert(self.alias, rows[start:start + UPSERT_ROWS])
        if vectors_coll is not None:
            vrows = [{"id": k, "dense": v} for k, v in distinct.items()]
            for start in range(0, len(vrows), UPSERT_ROWS):
                self.client.upsert(vectors_coll, vrows[start:start + UPSERT_ROWS])
            if old_keys - distinct.keys():
                self._drop_orphans(vectors_coll, old_keys - distinct.keys())
        return len(rows)

    def delete_images(self, image_ids: Iterable[int], kinds: Sequence[str] = KINDS) -> None:
        """Delete every text row of the given images (of ``kinds``); nothing to do is fine.

        Re-indexing calls this before writing new rows, and removing an image from the index
        (re-index of a deleted object) calls it so no orphan text stays searchable. The
        vectors of texts no row carries any more go too.
        """
        if not self.exists():
            return
        keys = self._delete_rows(image_ids, kinds, want_keys=True)
        vectors_coll = self.vectors_collection()
        if keys and vectors_coll is not None:
            self._drop_orphans(vectors_coll, keys)

    def _delete_rows(self, image_ids: Iterable[int], kinds: Sequence[str], want_keys: bool) -> set[int]:
        """Delete the rows; returns the text keys they carried (when asked, new layout only)."""
        if not self.exists():
            return set()
        ids = [int(i) for i in image_ids]
        kind_expr = "" if set(kinds) == set(KINDS) else f" and kind in {list(kinds)}"
        want_keys = want_keys and self.vectors_collection() is not None
        keys: set[int] = set()
        for start in range(0, len(ids), DELETE_IDS):
            expr = f"image_id in {ids[start:start + DELETE_IDS]}{kind_expr}"
            if want_keys:
                keys |= {int(r["text_key"]) for r in self.client.query(self.alias, filter=expr,
                                                                       output_fields=["text_key"])}
            self.client.delete(self.alias, filter=expr)
        return keys

    def _drop_orphans(self, vectors_coll: str, keys: set[int]) -> None:
        """Delete the vectors of those ``keys`` that no text row carries."""
        keys_list = sorted(keys)
        for start in range(0, len(keys_list), DELETE_IDS):
            chunk = keys_list[start:start + DELETE_IDS]
            used = {int(r["text_key"]) for r in self.client.query(
                self.alias, filter=f"text_key in {chunk}", output_fields=["text_key"])}
            orphans = [k for k in chunk if k not in used]
            if orphans:
                self.client.delete(vectors_coll, ids=orphans)

    def rows_of(self, image_id: int) -> list[dict]:
        """All text rows of one image, ordered by kind and position (for display and tests)."""
        rows = self.client.query(self.alias, filter=f"image_id == {int(image_id)}",
                                 output_fields=["kind", "position", "text", "confidence", "box"])
        return sorted((dict(r) for r in rows), key=lambda r: (KINDS.index(r["kind"]), r["position"]))

    def flush(self) -> None:
        name = self.physical_name()
        if name is not None:
            self.client.flush(name)
            if self._layout.get(name):
                self.client.flush(self._layout[name])

    # -- search -------------------------------------------------------------------------
    def search_bm25(self, queries: Sequence[str], limit: int, image_filter: Sequence[int] | None = None
                    ) -> list[list[TextHit]]:
        """Best text rows by BM25 for each query string (Milvus' BM25 function on ``text``).

        The query's stop words (IMGSEARCH_BM25_STOPWORDS, default Lucene's English set) are
        dropped first (``bm25_query``); the indexed texts keep theirs."""
        stop_words = STOP_WORD_SETS[self.settings.bm25_stopwords]
        return self._search([bm25_query(q, stop_words) for q in queries], "sparse", "BM25", limit, image_filter)

    def search_dense(self, vectors: Sequence[Sequence[float]], limit: int,
                     image_filter: Sequence[int] | None = None) -> list[list[TextHit]]:
        """Best text rows by cosine of their dense vectors, for each query vector.

        Distinct texts are searched first (``limit`` of them: a text carried by several rows
        fills several places), then the rows carrying them are fetched, best text first."""
        data = [list(map(float, v)) for v in vectors]
        vectors_coll = self.vectors_collection() if data else None
        if vectors_coll is None:
            return self._search(data, "dense", "IP", limit, image_filter)
        if image_filter is not None and not image_filter:
            return [[] for _ in data]
        params = search_params(self._vector_index_type(vectors_coll), self.settings, limit)
        found = self._direct(vectors_coll, data, "dense", limit, "", [], params)
        if found is None:
            found = self.client.search(vectors_coll, data=data, anns_field="dense", limit=limit,
                                       search_params=params)
        out = []
        for hits in found:
            scores = {int(h["id"]): float(h["distance"]) for h in hits}
            if not scores:
                out.append([])
                continue
            expr = f"text_key in {sorted(scores)}"
            if image_filter is not None:
                expr += f" and image_id in {[int(i) for i in image_filter]}"
            fields = ["id", "image_id", "kind", "text", "text_key"]
            rows = self._best_rows_direct(expr, scores, limit, fields)
            if rows is None:
                rows = self.client.query(self.alias, filter=expr, output_fields=fields, limit=ROWS_LIMIT)
            rows.sort(key=lambda r: (-scores[int(r["text_key"])], int(r["id"])))
            out.append([TextHit(int(r["image_id"]), r["kind"], r["text"], scores[int(r["text_key"])])
                        for r in rows[:limit]])
        return out

    def _best_rows_direct(self, expr: str, scores: dict[int, float], limit: int, fields: list[str]
                          ) -> list[dict] | None:
        """Embedded: the ``limit`` best rows matching ``expr`` (best text first, then row id),
        read column-wise in two steps: the keys of every match, then the fields of the best
        ones only (a tag carried by half the collection is many rows). None: not embedded."""
        if self.settings.milvus_uri:
            return None
        db = self.settings.effective_milvus_uri()
        keys = lite_search.direct_columns(db, self.alias, expr, ["id", "text_key"])
        if keys is None:
            return None
        ids = np.asarray(keys["id"], dtype=np.int64)
        if not len(ids):
            return []
        lookup = np.array(sorted(scores), dtype=np.int64)
        key_scores = np.array([scores[int(k)] for k in lookup], dtype=np.float64)
        row_scores = key_scores[np.searchsorted(lookup, np.asarray(keys["text_key"], dtype=np.int64))]
        best = ids[np.lexsort((ids, -row_scores))[:limit]].tolist()  # best text first, then row id
        return lite_search.direct_rows(db, self.alias, f"id in {best}", fields)

    def _direct(self, name: str, data: list, field: str, limit: int, expr: str, fields: list[str],
                params: dict) -> list[list[dict]] | None:
        """Search an embedded Milvus Lite of this process without gRPC (None: not embedded)."""
        if self.settings.milvus_uri:
            return None
        return lite_search.direct_search(self.settings.effective_milvus_uri(), name, data, field, limit, expr,
                                         fields, params)

    def _vector_index_type(self, vectors_coll: str) -> str | None:
        if self._vec_index_types is None or self._vec_index_types.collection != vectors_coll:
            self._vec_index_types = IndexTypes(self.client, vectors_coll)
        return self._vec_index_types["dense"]

    def _search(self, data: list, field: str, metric: str, limit: int,
                image_filter: Sequence[int] | None) -> list[list[TextHit]]:
        if not data or not self.exists():
            return [[] for _ in data]
        expr = f"image_id in {[int(i) for i in image_filter]}" if image_filter is not None else ""
        params = search_params(self._index_types[field], self.settings, limit, metric)
        results = self._direct(self.alias, data, field, limit, expr, ["image_id", "kind", "text"], params)
        if results is None:
            results = self.client.search(self.alias, data=data, anns_field=field, limit=limit, filter=expr,
                                         output_fields=["image_id", "kind", "text"], search_params=params)
        out = []
        for hits in results:
            # Milvus Lite reports BM25 as a negative distance (smaller = better); server as a
            # positive score. Both come back best first, so keep the order and the magnitude.
            out.append([TextHit(int(h["entity"]["image_id"]), h["entity"]["kind"], h["entity"]["text"],
                                abs(float(h["distance"])) if metric == "BM25" else float(h["distance"]))
                        for h in hits])
        return out

    def images_containing(self, image_ids: Sequence[int], words: Sequence[str]) -> set[int]:
        """Those of ``image_ids`` whose texts (any kind) contain every token of every word.

        Matching is Milvus ``TEXT_MATCH`` on analysed tokens (standard analyzer: lower-cased,
        split at non-word characters), so ``--must xk-4471`` needs the tokens ``xk`` and
        ``4471``, each in some text row of the image.
        """
        keep = {int(i) for i in image_ids}
        tokens = [t.lower() for w in words for t in TOKEN_RE.findall(w)]
        if not tokens or not keep:
            return keep if not tokens else set()
        if not self.exists():
            return set()
        for token in dict.fromkeys(tokens):
            rows = self.client.query(self.alias, filter=f"image_id in {sorted(keep)} and TEXT_MATCH(text, '{token}')",
                                     output_fields=["image_id"], limit=16384)
            keep &= {int(r["image_id"]) for r in rows}
            if not keep:
                break
        return keep


def vectors_name(physical: str) -> str:
    """The distinct-text vectors collection beside texts collection ``physical``."""
    return f"{physical}_vecs"


def delete_texts(settings: Settings, image_ids: Iterable[int], collection: str | None = None) -> None:
    """Delete every OCR line, caption and tag of ``image_ids`` in the texts paired with
    ``collection`` (default: the configured one). For re-indexing: images removed from the
    source must not stay findable by their text. Missing collection or ids: nothing to do."""
    TextStore(settings, collection).delete_images(image_ids)
