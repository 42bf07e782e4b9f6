"""Record a benchmark row in bench/RESULTS.md, in its own script's table.

Why: several scripts share one results file; appending at the end would put a row under
whichever table happens to come last. Each script owns a section (``## bench/<name>.py``);
a row goes after that section's last table row, and a missing section is added at the end.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def record_row(heading: str, cells: list[object], section: str, path: Path = RESULTS) -> None:
    """Record one run: today's date, the command as run, then ``cells``, at the end of the
    table under ``heading`` (``## bench/<name>.py``).

    ``section`` is the full text (heading, explanation, table header) used when the file
    has no such heading yet.
    """
    script = f"bench/{Path(sys.argv[0]).name}"
    command = " ".join([script, *sys.argv[1:]])
    row = "| " + " | ".join([datetime.now(UTC).strftime("%Y-%m-%d"), f"`{command}`", *map(str, cells)]) + " |"
    row += "\n"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        path.write_text(text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n" + row, encoding="utf-8")
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    last_row = max((i for i in range(start, end) if lines[i].startswith("|")), default=end - 1)
    lines.insert(last_row + 1, row)
    path.write_text("".join(lines), encoding="utf-8")
