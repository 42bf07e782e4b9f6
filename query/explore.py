"""Pictures of a result set and of the collection: k-means groups, similarity graph, 2-D map.

Pure numpy/scikit-learn over CLIP vectors (rows whose ``clip`` the gateway fetched from a
query worker), so everything here is testable without servers. Vectors are L2-normalised
first: the index searches by inner product over normalised CLIP vectors, so cosine
similarity is the score the user sees next to each hit.
"""

from __future__ import annotations

import math
from urllib.parse import unquote, urlparse

import numpy as np

MAX_GROUPS = 12


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def default_groups(n: int) -> int:
    """About sqrt(n/2) groups (rule of thumb), at least 1, at most MAX_GROUPS."""
    return max(1, min(MAX_GROUPS, round(math.sqrt(n / 2))))


def kmeans(vectors: np.ndarray, groups: int, seed: int = 0) -> np.ndarray:
    """Group labels (0..groups-1) by k-means over normalised vectors (deterministic for a seed)."""
    n = len(vectors)
    groups = max(1, min(groups, n))
    if groups == 1:
        return np.zeros(n, dtype=int)
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=groups, n_init=4, random_state=seed).fit_predict(normalise(vectors)).astype(int)


def similarity_edges(vectors: np.ndarray, neighbours: int = 3) -> list[tuple[int, int, float]]:
    """Undirected edges (i, j, cosine) from each node to its ``neighbours`` most similar nodes."""
    x = normalise(vectors)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    edges: dict[tuple[int, int], float] = {}
    for i in range(len(x)):
        for j in np.argsort(-sim[i])[:neighbours]:
            if np.isfinite(sim[i, j]):
                edges[(min(i, int(j)), max(i, int(j)))] = float(sim[i, j])
    return [(i, j, w) for (i, j), w in sorted(edges.items())]


def spring_layout(n: int, edges: list[tuple[int, int, float]], start: np.ndarray, iterations: int = 200,
                  seed: int = 0) -> np.ndarray:
    """Fruchterman-Reingold: edges pull (more for similar pairs), all nodes push; positions in [0, 1]^2."""
    if n == 0:
        return np.zeros((0, 2))
    if n == 1:
        return np.array([[0.5, 0.5]])
    rng = np.random.default_rng(seed)
    pos = _unit_box(start + rng.normal(scale=1e-3, size=start.shape))
    k = math.sqrt(1.0 / n)
    weights = np.zeros((n, n))
    for i, j, w in edges:
        weights[i, j] = weights[j, i] = max(w, 0.0) + 0.05
    temperature = 0.1
    gravity = 2.0 * n * k
    for _ in range(iterations):
        delta = pos[:, None, :] - pos[None, :, :]
        dist = np.maximum(np.linalg.norm(delta, axis=2), 1e-4)
        force = (k * k / dist) - weights * dist * dist / k  # repulsion minus weighted attraction
        np.fill_diagonal(force, 0)
        move = (delta / dist[:, :, None] * force[:, :, None]).sum(axis=1)
        move += gravity * (0.5 - pos)  # keeps groups that share no edge from drifting to the corners
        length = np.maximum(np.linalg.norm(move, axis=1, keepdims=True), 1e-9)
        pos += move / length * np.minimum(length, temperature)
        temperature *= 0.98
    return _unit_box(pos)


def pca2(vectors: np.ndarray) -> np.ndarray:
    """The first two principal components (zeros when there is no spread)."""
    x = normalise(vectors)
    x = x - x.mean(axis=0)
    if len(x) < 2 or not np.any(x):
        return np.zeros((len(x), 2))
    _u, _s, vt = np.linalg.svd(x, full_matrices=False)
    out = x @ vt[:2].T
    return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def results_graph(rows: list[dict], vectors: np.ndarray, groups: int | None = None, neighbours: int = 3) -> dict:
    """Nodes (id, uri, group, x, y) and weighted edges for a result set, in the rows' order.

    Ids are strings in the output: they are 63-bit and JavaScript numbers hold 53."""
    n = len(rows)
    groups = groups or default_groups(n)
    labels = kmeans(vectors, groups) if n else np.zeros(0, dtype=int)
    edges = similarity_edges(vectors, neighbours) if n > 1 else []
    pos = spring_layout(n, edges, pca2(vectors) if n else np.zeros((0, 2)))
    nodes = [{"id": str(r["id"]), "uri": r["uri"], "group": int(g), "x": round(float(p[0]), 4),
              "y": round(float(p[1]), 4)} for r, g, p in zip(rows, labels, pos)]
    return {"nodes": nodes, "groups": int(labels.max()) + 1 if n else 0,
            "edges": [{"source": str(rows[i]["id"]), "target": str(rows[j]["id"]), "weight": round(w, 4)}
                      for i, j, w in edges]}


def project(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE positions in [0, 1]^2 (PCA to 50 dimensions first, as usual for t-SNE)."""
    n = len(vectors)
    if n < 4:
        return _unit_box(pca2(vectors)) if n else np.zeros((0, 2))
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = normalise(vectors)
    if x.shape[1] > 50 and n > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
              learning_rate="auto").fit_transform(x)
    return _unit_box(xy)


def collection_map(rows: list[dict], vectors: np.ndarray, count: int, groups: int | None = None) -> dict:
    """Points (id, uri, x, y, cluster, folder, mime, width, height) of a sample of the collection.

    Runs on one native thread: the gateway keeps serving meanwhile, the map is computed
    rarely (then cached), and OpenMP threads spinning on a busy host made it 3-5x slower
    (bench/web.py: 45 s vs 9 s for 500 points on 2 loaded cores)."""
    from threadpoolctl import threadpool_limits

    n = len(rows)
    with threadpool_limits(limits=1):
        xy = project(vectors)
        labels = kmeans(vectors, groups or default_groups(n)) if n else np.zeros(0, dtype=int)
    points = [{"id": str(r["id"]), "uri": r["uri"], "x": round(float(p[0]), 4), "y": round(float(p[1]), 4),
               "cluster": int(c), "folder": folder_of(r["uri"]), "mime": r.get("mime", ""),
               "width": r.get("width"), "height": r.get("height")} for r, p, c in zip(rows, xy, labels)]
    return {"count": count, "sampled": n, "method": "t-SNE", "clusters": int(labels.max()) + 1 if n else 0,
            "points": points}


def folder_of(uri: str) -> str:
    """The last folder of a URI's path (often the class or album), '' at the root."""
    parts = unquote(urlparse(uri).path).rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 else ""


def _unit_box(xy: np.ndarray) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi - lo == 0, 1, hi - lo)
    return np.where(hi - lo == 0, 0.5, (xy - lo) / span)
