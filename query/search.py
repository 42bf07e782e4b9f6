"""The search service: encode a query with the collection's own model, search, rank.

The model is taken from what the collection recorded when it was built, never from the
current settings, so a query vector can never come from a different model than the
indexed vectors.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import ImageError, ModelMismatchError, QueryError
from common.images import decode_image
from common.models.clip import ClipModel, load_clip
from common.settings import Settings
from common.store import Hit, ImageStore

MAX_K = 1000
MAX_TEXT_CHARS = 2000


class SearchService:
    """text->image, image->image and more-like-this search over one collection."""

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

    def search_text(self, text: str, k: int = 10, filter_expr: str = "") -> list[Hit]:
        text = (text or "").strip()
        if not text:
            raise QueryError("empty text query")
        if len(text) > MAX_TEXT_CHARS:
            raise QueryError(f"text query longer than {MAX_TEXT_CHARS} characters")
        return self._search(self.model.encode_texts([text])[0], k, filter_expr=filter_expr)

    def search_image(self, image: bytes | str | Path, k: int = 10, filter_expr: str = "") -> list[Hit]:
        """Search by an image given as bytes or a local file path.

        ``filter_expr`` (here and below) is a Milvus expression compiled by ``query.filters``
        from structured filters; callers outside this package never write one."""
        if not isinstance(image, bytes):
            try:
                image = Path(image).expanduser().read_bytes()
            except OSError as exc:
                raise QueryError(f"cannot read query image {image}: {exc.strerror or exc}") from None
        try:
            decoded = decode_image(image, self.settings.max_image_bytes, self.settings.max_image_pixels)
        except ImageError as exc:
            raise QueryError(f"bad query image ({exc.reason}): {exc.message}") from None
        return self._search(self.model.encode_images([decoded.image])[0], k, filter_expr=filter_expr)

    def search_like(self, ref: int | str, k: int = 10, filter_expr: str = "") -> list[Hit]:
        """Images like an indexed one (by id or URI); the image itself is left out."""
        row = self.lookup(ref)
        return self._search(row["clip"], k, exclude=[int(row["id"])], filter_expr=filter_expr)

    def lookup(self, ref: int | str) -> dict:
        """The indexed row (with its vector) for an image id or URI; QueryError if absent."""
        text = str(ref).strip()
        row = None
        if text.isdigit():
            row = self.store.get(int(text), with_vector=True)
        elif "://" in text:
            row = self.store.get_by_uri(text, with_vector=True)
        else:
            raise QueryError(f"--like takes an image id (a number) or an indexed URI, got {text!r}")
        if row is None:
            raise QueryError(f"no indexed image with id or uri {text!r} in {self.store.alias!r}")
        return row

    def _search(self, vector, k: int, exclude: list[int] | None = None, filter_expr: str = "") -> list[Hit]:
        return self.search_vectors([vector], k, exclude, filter_expr)[0]

    def search_vectors(self, vectors, k: int, exclude: list[int] | None = None,
                       filter_expr: str = "") -> list[list[Hit]]:
        """One Milvus search for several query vectors that share k, exclusions and filter
        (the query worker batches concurrent requests through here)."""
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise QueryError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        return self.store.search(list(vectors), k, exclude_ids=exclude or (), filter_expr=filter_expr)
