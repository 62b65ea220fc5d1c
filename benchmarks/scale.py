"""Curation at growing scale: wall time, peak memory of the whole process tree and peak disk.

Builds corpora from the shared biomedical abstracts (`../shared/data`): documents of 3-8 sentences
drawn from different abstracts (seeded, no two alike), 30,000 documents per scale unit, each
corpus one `.txt.gz` file, as corpora ship. Each is curated by domainlm's corpus stage in a child
process with 1 and with 2 workers (`--workers`; with `--ray` also on a local Ray cluster of 2
workers), sampled every 0.1 s: the resident memory of the stage's own (head) process and of it
with all its workers (summed over /proc), and the bytes under the output folder.
Reported per run: seconds, documents/s, peak tree memory (MiB), peak disk as a multiple of the
uncompressed text, and whether the kept documents equal the 1-worker run's.

    python benchmarks/scale.py                     # scales 1 and 10, 1 and 2 workers (~6 min on 2 cores)
    python benchmarks/scale.py --scales 1 10 30 --ray   # and a local 2-worker Ray cluster per corpus
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DOCS_PER_SCALE = 30_000
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")

CURATE = """
import json, sys
from pathlib import Path
from domainlm.config import CorpusConfig
from domainlm.corpus import curate
config = CorpusConfig(sources=[{"path": sys.argv[1]}], unit_bytes=int(sys.argv[3]))
if sys.argv[5] == "ray":  # a local Ray cluster of that many worker processes
    import ray
    ray.init(num_cpus=int(sys.argv[4]), include_dashboard=False, log_to_driver=False)
stats = curate(config, Path(sys.argv[2]), workers=int(sys.argv[4]), executor=sys.argv[5])
print(json.dumps({k: stats[k] for k in ("read", "kept")}))
"""


def build_corpus(scale: int, path: Path, seed: int = 0) -> int:
    """`scale` x 30,000 documents of 3-8 sentences from different abstracts into a .txt.gz;
    returns the uncompressed bytes."""
    with gzip.open(DATA / "corpora" / "biomed_abstracts.txt.gz", "rt", encoding="utf-8") as handle:
        abstracts = [SENTENCE.split(line.strip()) for line in handle if len(line.split()) >= 60]
    rng, seen, size = random.Random(seed), set(), 0
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=6) as out:
        while len(seen) < scale * DOCS_PER_SCALE:
            picked = rng.sample(abstracts, rng.randint(3, 8))
            text = " ".join(rng.choice(sentences) for sentences in picked)
            key = hashlib.blake2b(text.encode(), digest_size=8).digest()
            if key not in seen:
                seen.add(key)
                out.write(text + "\n")
                size += len(text.encode()) + 1
    return size


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and every descendant (from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {pid}, [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier and p not in tree]
        tree.update(children)
        frontier = children
    return sum(rss(p) for p in tree)


def rss(pid: int) -> int:
    """Resident bytes of one process (0 once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def disk_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                continue  # removed while walking
    return total


def curate_measured(corpus: Path, out: Path, unit_bytes: int, workers: int, executor: str = "local") -> dict:
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    started = time.time()
    process = subprocess.Popen([sys.executable, "-c", CURATE, str(corpus), str(out), str(unit_bytes), str(workers),
                                executor],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    peak = {"rss": 0, "head": 0, "disk": 0}

    def sample():
        while process.poll() is None:
            peak["rss"] = max(peak["rss"], tree_rss(process.pid))
            peak["head"] = max(peak["head"], rss(process.pid))
            peak["disk"] = max(peak["disk"], disk_bytes(out))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, _ = process.communicate()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"curation of {corpus} failed (exit {process.returncode})")
    kept = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(out.glob("*.jsonl")))).hexdigest()
    return {"seconds": round(time.time() - started, 1), **json.loads(stdout.strip().splitlines()[-1]),
            "peak_tree_mib": round(peak["rss"] / 2**20), "peak_head_mib": round(peak["head"] / 2**20),
            "peak_disk_bytes": peak["disk"],
            "left_on_disk_bytes": disk_bytes(out), "outputs_sha256": kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--unit-mib", type=float, default=16)
    parser.add_argument("--ray", action="store_true", help="also run each corpus on a local 2-worker Ray cluster")
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} not found: this benchmark builds its corpora from the shared abstracts")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for scale in args.scales:
            corpus = folder / f"corpus-{scale}x.txt.gz"
            started = time.time()
            text_bytes = build_corpus(scale, corpus)
            print(f"{scale}x: {scale * DOCS_PER_SCALE} documents, {text_bytes / 2**20:.0f} MiB of text "
                  f"({corpus.stat().st_size / 2**20:.0f} MiB gzip), built in {time.time() - started:.0f} s", flush=True)
            first = None
            runs = [(w, "local") for w in args.workers] + [(2, "ray")] * args.ray
            for workers, executor in runs:
                result = curate_measured(corpus, folder / f"out-{scale}-{workers}-{executor}", int(args.unit_mib * 2**20),
                                         workers, executor)
                first = first or result["outputs_sha256"]
                row = {"scale": scale, "workers": workers, "executor": executor, "text_mib": round(text_bytes / 2**20),
                       **result, "docs_per_s": round(result["read"] / result["seconds"]),
                       "peak_disk_x_text": round(result["peak_disk_bytes"] / text_bytes, 2),
                       "same_as_first": result["outputs_sha256"] == first}
                rows.append(row)
                print(json.dumps(row), flush=True)
    base = {r["scale"]: r["seconds"] for r in rows if r["workers"] == args.workers[0] and r["executor"] == "local"}
    for row in rows:
        row["speedup"] = round(base[row["scale"]] / row["seconds"], 2)
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
