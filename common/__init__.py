"""Shared library of imgsearch: settings, sources, image decoding, models, Milvus store, ids.

`common` imports neither `ingest` nor `query`; both of those import it.
"""
