"""Which vector index a new collection gets, and the search parameters that go with it.

Why not Milvus' AUTOINDEX: it builds HNSW (Milvus Lite included), and HNSW loses rows among
exact-duplicate vectors. Copies of one vector only link to each other, become a sink the
graph search cannot leave, and rows outside it go unreachable whatever ``ef`` is. Our data
is full of duplicates: every image tagged "handbag" has the same tag vector, byte-identical
images have the same CLIP vector, near-copies the same hash. Measured on the mixed
evaluation set (707 text rows, 561 of them tags from a small vocabulary): the query
"marmalade" did not find the OCR line "marmalade" (cosine 1.0) under HNSW at any ``ef``;
FLAT and IVF_FLAT found it first.

So: FLAT (exact) on Milvus Lite, which serves small collections anyway, and IVF_FLAT on a
Milvus server (clusters simply hold the duplicates); operators with de-duplicated data may
choose HNSW (``IMGSEARCH_VECTOR_INDEX``).

The texts' dense vectors are now stored once per distinct text (``common.texts``), so the
tag vocabulary no longer makes sinks there; copies of one image still share a CLIP vector.
On embedded Milvus Lite, FLAT costs about an exact numpy scan since ``common.lite_search``
removed Milvus Lite's per-row Python work (~20 ms at 100k x 512 on 2 quiet cores, ~160 ms
at 1M); past a few hundred thousand images HNSW is the choice for ~ms answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # settings imports this module to validate IMGSEARCH_VECTOR_INDEX
    from common.settings import Settings

INDEX_TYPES = ("auto", "FLAT", "IVF_FLAT", "HNSW")
IVF_NLIST = 1024
_BUILD = {"FLAT": {}, "IVF_FLAT": {"nlist": IVF_NLIST}, "HNSW": {"M": 16, "efConstruction": 200}}


def is_milvus_lite(client) -> bool:
    """Milvus Lite, as a local file or as ``milvus-lite server``, reports ``milvus_lite-x.y.z``."""
    try:
        return str(client.get_server_version()).startswith("milvus_lite")
    except Exception:  # an old server without the call: treat as a server
        return False


def index_type_for(settings: Settings, client) -> str:
    """The index type a new collection's vector fields get under ``settings``."""
    if settings.vector_index != "auto":
        return settings.vector_index
    return "FLAT" if is_milvus_lite(client) else "IVF_FLAT"


def add_vector_index(index_params, field: str, index_type: str, metric: str = "IP") -> None:
    """Add ``field``'s index to a ``prepare_index_params()`` object."""
    index_params.add_index(field, index_type=index_type, metric_type=metric, params=dict(_BUILD[index_type]))


def search_params(index_type: str | None, settings: Settings, limit: int, metric: str = "IP") -> dict:
    """``search_params`` for a field with this index (None: unknown, Milvus' defaults)."""
    params: dict = {}
    if index_type == "IVF_FLAT":
        params = {"nprobe": settings.vector_nprobe}
    elif index_type == "HNSW":
        params = {"ef": max(64, limit)}
    return {"metric_type": metric, "params": params} if params else {"metric_type": metric}


class IndexTypes:
    """The index type of each vector field of one collection (asked once, then cached)."""

    def __init__(self, client, collection: str):
        self.client, self.collection = client, collection
        self._types: dict[str, str | None] = {}

    def __getitem__(self, field: str) -> str | None:
        if field not in self._types:
            try:
                self._types[field] = str(self.client.describe_index(self.collection, field).get("index_type"))
            except Exception:  # no index yet, or an old server: search with the defaults
                return None
        return self._types[field]
