"""The ``clip`` channel: the query's CLIP vector against the images' ``clip`` vectors.

Text queries go through the text tower, image queries through the image tower (one
forward pass per tower for the whole batch); an indexed image (``like``) brings its own
stored vector.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.store import Hit
from query.channels.base import Channel, Query, grouped
from query.fusion import ChannelHit


class ClipChannel(Channel):
    name = "clip"

    def encode(self, queries: Sequence[Query]) -> None:
        texts = [q for q in queries if q.kind == "text"]
        if texts:
            for q, v in zip(texts, self.service.model.encode_texts([q.query_text for q in texts]), strict=True):
                q.vectors[self.name] = v
        images = [q for q in queries if q.kind == "image"]
        if images:
            for q, v in zip(images, self.service.model.encode_images([q.pil for q in images]), strict=True):
                q.vectors[self.name] = v
        for q in queries:
            if q.kind == "like":
                q.vectors[self.name] = q.row["clip"]

    def search(self, queries: Sequence[Query]) -> list[list[Hit]]:
        store = self.service.store
        return grouped(queries, lambda q: (q.depth, q.filter_expr, tuple(q.exclude)),
                       lambda key, qs: store.search([q.vectors[self.name] for q in qs], key[0], field=self.name,
                                                    exclude_ids=key[2], filter_expr=key[1]))

    def evidence(self, q: Query, hits: list[Hit]) -> list[ChannelHit]:
        q.uris.update({h.id: h.uri for h in hits})
        return [ChannelHit(h.id, h.score) for h in hits]

    def warm(self) -> None:
        model = self.service.model
        model.warm()  # tokenizer, both towers
        self.service.store.search([model.encode_texts(["warm up"])[0]], 1, field=self.name)

    def models(self) -> list:
        return [self.service.model]
