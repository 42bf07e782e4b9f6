"""The ``imgsearch`` command: composes ``ingest`` and ``query`` (which never import each other)."""

__version__ = "0.1.0"
