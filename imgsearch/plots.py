"""Precision-recall curves of an evaluation, drawn headless: ``imgsearch eval --plot FILE.png``.

People compare search channels by their PR curves more than by a table of numbers. One panel
per query kind (and one for all queries), one curve per channel and the fused search, each
channel always in the same colour (:data:`COLOURS`) so figures from different runs compare at
a glance. matplotlib draws with its Agg backend: no display, no GUI toolkit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from common.errors import ConfigError
from imgsearch.metrics import RECALL_LEVELS

# fixed colours per channel (tab10), fused in black; an unknown channel takes the next free one
COLOURS = {"clip": "#1f77b4", "bm25": "#ff7f0e", "dense": "#2ca02c", "phash": "#d62728", "fused": "#000000"}
SPARE = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def colour_of(channel: str, taken: dict[str, str]) -> str:
    """The channel's fixed colour, or a spare one not used yet in this figure."""
    if channel in COLOURS:
        return COLOURS[channel]
    if channel not in taken:
        free = [c for c in SPARE if c not in taken.values()]
        taken[channel] = free[0] if free else SPARE[len(taken) % len(SPARE)]
    return taken[channel]


def check_plot_path(path: str | Path) -> Path:
    """The PNG path to write, or a ConfigError saying why not (the CLI asks before any work)."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--plot writes a PNG file: give a name ending in .png, got {str(path)!r}")
    if not path.parent.is_dir():
        raise ConfigError(f"--plot: folder {str(path.parent)!r} does not exist")
    return path


def plot_pr_curves(report, path: str | Path) -> Path:
    """Write the report's PR curves to ``path`` (PNG); returns the path written.

    ``report`` is an :class:`imgsearch.evaluate.EvalReport`."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib (pip install matplotlib)") from None
    path = check_plot_path(path)
    panels = [("all queries", None)] + [(f"kind: {kind}", ids) for kind, ids in report.kinds.items()
                                         if len(report.kinds) > 1]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows), squeeze=False)
    spare: dict[str, str] = {}
    drawn: dict[str, dict[str, list[float]]] = {}  # panel -> channel -> curve, stored in the PNG too
    for ax, (title, ids) in zip(axes.flat, panels):
        count = len(ids) if ids is not None else sum(map(len, report.kinds.values()))
        for channel in report.channels:
            curve = channel.curve(ids)
            drawn.setdefault(title, {})[channel.name] = [round(p, 4) for p in curve]
            ax.plot(RECALL_LEVELS, curve, color=colour_of(channel.name, spare), linewidth=2,
                    marker="o", markersize=3, label=f"{channel.name} (mAP {channel.mean(ids)['map']:.2f})")
        ax.set_title(f"{title} ({count} {'query' if count == 1 else 'queries'})", fontsize=10)
        ax.set_xlabel("recall")
        ax.set_ylabel("interpolated precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"precision-recall, {Path(report.dataset).name}: {report.images} images", fontsize=11)
    fig.tight_layout()
    try:
        # the curves' numbers ride along in a PNG text chunk: a reader (or a test) can tell
        # what was drawn without reading pixels
        fig.savefig(path, dpi=100, metadata={"Description": json.dumps({"recall": list(RECALL_LEVELS),
                                                                        "panels": drawn})})
    except OSError as exc:
        raise ConfigError(f"--plot: cannot write {str(path)!r}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return path
