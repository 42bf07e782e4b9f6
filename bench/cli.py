"""How long an embedded ``imgsearch search`` takes, against the import it cannot avoid.

Side by side in one run, alternating so that load on a shared machine hits both alike:

baseline: ``python -c "import torch, open_clip"`` (the floor: a CLIP text query needs both);
search:   ``python -m imgsearch search --text QUERY`` on the demo collection, timed from
          process start to its first printed hit (stdout's first line), and to its exit.

Each is a fresh process every time (nothing warm but the OS file cache, which the first,
untimed round fills). Prints medians of wall time and of CPU time (user + sys of the
process and its children: a fairer figure when other work shares the cores), and the
ratios search/baseline; the goal is <= 1.5x. ``--record`` adds a row to bench/RESULTS.md.
Not a test: nothing here asserts a speed.

    python bench/cli.py                          # demo collection in a temporary data dir
    python bench/cli.py --data-dir /tmp/demo --rounds 5 --record
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import machine  # noqa: E402
from bench.results import record_row  # noqa: E402

SECTION = """\
## bench/cli.py — embedded `imgsearch search` vs importing torch and open_clip

Fresh processes, alternating: `python -c "import torch, open_clip"` (baseline) vs
`python -m imgsearch search --text QUERY` on the demo collection, timed from process start
to the first printed hit; medians of wall and of CPU (user+sys incl. children), and the
ratios search/baseline (goal <= 1.5x).

| date | command | query | rounds | baseline wall / cpu s | search, first hit: wall / cpu s | wall x | cpu x | machine |
|---|---|---|---|---|---|---|---|---|
"""


def env_for(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")}
    env.update({"IMGSEARCH_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
                "IMGSEARCH_CLIP_MODEL": "imgsearch-fmnist-lit-minilm",  # the demo collection's model, explicitly
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))})
    for name in ("IMGSEARCH_MODEL_CACHE_DIR",):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(seconds to the first stdout line, seconds to exit, CPU seconds) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    first_at = time.perf_counter() - start
    out, err = proc.communicate()
    done_at = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{err.decode(errors='replace')[-2000:]}")
    if not first:
        first_at = done_at
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return first_at, done_at, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="data dir with the demo collection (made if missing)")
    parser.add_argument("--query", default="a warm winter coat")
    parser.add_argument("--channels", help="--channels for the search (default: the text query's defaults)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each (after one untimed)")
    parser.add_argument("--record", action="store_true", help="add the result to bench/RESULTS.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        env = env_for(data_dir)
        if not (data_dir / "milvus.db").exists():
            print(f"indexing the demo collection into {data_dir} (not timed) ...", flush=True)
            subprocess.run([sys.executable, "-m", "imgsearch", "demo", "--no-progress"], cwd=ROOT, env=env,
                           check=True, stdout=subprocess.DEVNULL)
        baseline = [sys.executable, "-c", "import torch, open_clip"]
        search = [sys.executable, "-m", "imgsearch", "search", "--text", args.query, "-k", "10"]
        if args.channels:
            search += ["--channels", args.channels]
        timed(baseline, env), timed(search, env)  # fill the file cache; not counted
        base_runs, search_runs = [], []
        for n in range(args.rounds):
            base_runs.append(timed(baseline, env))
            search_runs.append(timed(search, env))
            print(f"round {n + 1}: baseline {base_runs[-1][1]:.2f} s (cpu {base_runs[-1][2]:.2f}); search first hit "
                  f"{search_runs[-1][0]:.2f} s, exit {search_runs[-1][1]:.2f} s (cpu {search_runs[-1][2]:.2f})",
                  flush=True)

    base_wall = statistics.median(r[1] for r in base_runs)
    base_cpu = statistics.median(r[2] for r in base_runs)
    hit_wall = statistics.median(r[0] for r in search_runs)
    search_cpu = statistics.median(r[2] for r in search_runs)
    load = os.getloadavg()[0]
    print(f"baseline import torch, open_clip: {base_wall:.2f} s wall, {base_cpu:.2f} s cpu")
    print(f"imgsearch search to first hit:    {hit_wall:.2f} s wall, {search_cpu:.2f} s cpu")
    print(f"ratio: wall x{hit_wall / base_wall:.2f}, cpu x{search_cpu / base_cpu:.2f} (goal <= 1.5); "
          f"load average {load:.1f}")
    if args.record:
        record_row("## bench/cli.py", [
            repr(args.query) + (f" --channels {args.channels}" if args.channels else ""), args.rounds,
            f"{base_wall:.2f} / {base_cpu:.2f}", f"{hit_wall:.2f} / {search_cpu:.2f}",
            f"x{hit_wall / base_wall:.2f}", f"x{search_cpu / base_cpu:.2f}",
            f"{machine()}, load average {load:.1f}"], SECTION)
        print(f"recorded in {ROOT / 'bench' / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
