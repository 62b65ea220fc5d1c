"""Corpus curation: domainlm's pipeline vs datatrove's default pipeline on one generated corpus.

The corpus (deterministic, no downloads): multi-line documents of Zipf-distributed pseudo-words
and English stop words, with planted
- exact duplicates;
- near duplicates of an original at known word-edit rates (1, 2, 5, 10, 20% of words replaced);
  their true word-5-gram Jaccard with the original is computed exactly;
- low-quality documents (repeated lines, lorem ipsum, symbol soup, bullet lists, two words);
- test-set leaks: documents that quote a 20-word span of a fake task's test text.

Reported for each pipeline: docs/s per core (one worker: the per-core rate), near-duplicate
recall over planted pairs with Jaccard >= 0.8 (a pair counts when the copy or the original was
removed) and precision (removed near-duplicates that belong to a planted pair); for domainlm
also leak recall, and peak memory at 1x and 10x the corpus (each in its own process). The last
line is one JSON object.

    python benchmarks/curation_throughput.py                 # 20,000 documents (< 10 min, 2 cores)
    python benchmarks/curation_throughput.py --docs 5000 --no-datatrove --no-scale
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import itertools
import json
import multiprocessing as mp
import os
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

STOP = "the of and to in a is that for with as was on by be are this from at which".split()
EDIT_RATES = (0.01, 0.02, 0.05, 0.10, 0.20)


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / max(1, len(x | y))


def generate(total: int, seed: int = 0) -> tuple[list[dict], list[str], dict]:
    """(documents, the fake task's test texts, truth)."""
    rng = random.Random(seed)
    vocab = [f"{rng.choice('bcdfghklmnprstvz')}{rng.choice('aeiou')}{rng.choice('lmnrst')}"
             f"{rng.choice('aeiou')}{rng.choice(['', 'n', 's', 'tion', 'ase', 'ine'])}" for _ in range(6000)]
    cumulative = list(itertools.accumulate(1 / (i + 1) for i in range(len(vocab))))  # Zipf

    def zipf_words(n: int) -> list[str]:
        return rng.choices(vocab, cum_weights=cumulative, k=n)

    def sentence() -> str:
        n = rng.randint(8, 25)
        words = [rng.choice(STOP) if rng.random() < 0.35 else w for w in zipf_words(n)]
        return " ".join(words).capitalize() + "."

    def document() -> str:
        return "\n".join(" ".join(sentence() for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(2, 6)))

    tests = [" ".join(sentence() for _ in range(3)) for _ in range(200)]
    n_base = int(total * 0.78)
    docs = [document() for _ in range(n_base)]
    roles = ["original"] * n_base
    groups = list(range(n_base))  # copies (exact or edited) join their original's group
    pairs = []  # (copy index, original index, edit rate, true jaccard)
    for _ in range(int(total * 0.04)):  # exact duplicates
        original = rng.randrange(n_base)
        docs.append(docs[original])
        roles.append("exact")
        groups.append(original)
    per_rate = int(total * 0.02)
    for rate in EDIT_RATES:  # near duplicates
        for _ in range(per_rate):
            original = rng.randrange(n_base)
            words = docs[original].split(" ")
            for i in range(len(words)):
                if rng.random() < rate:
                    words[i] = zipf_words(1)[0]
            docs.append(" ".join(words))
            roles.append(f"near-{rate}")
            groups.append(original)
            pairs.append((len(docs) - 1, original, rate, jaccard(docs[original], docs[-1])))
    low_quality = [
        lambda: "\n".join(["Click here to buy now!"] * 12),
        lambda: "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " + document(),
        lambda: " ".join("#$%&*" * rng.randint(3, 8) for _ in range(40)),
        lambda: "\n".join(f"- item {sentence()}" for _ in range(12)),
        lambda: "two words",
    ]
    for i in range(int(total * 0.04)):
        docs.append(low_quality[i % len(low_quality)]())
        roles.append("low-quality")
        groups.append(len(docs) - 1)
    leaks = []
    while len(docs) < total:  # test-set leaks: a 20-word span of a test text inside a document
        words = rng.choice(tests).split()
        start = rng.randrange(max(1, len(words) - 20))
        docs.append(document() + "\n" + " ".join(words[start : start + 20]) + "\n" + document())
        roles.append("leak")
        groups.append(len(docs) - 1)
        leaks.append(len(docs) - 1)
    order = list(range(len(docs)))
    rng.shuffle(order)  # planted documents are spread through the corpus
    position = {old: new for new, old in enumerate(order)}
    records = [{"id": f"d{position[i]}", "text": docs[i]} for i in order]
    sizes = collections.Counter(groups)
    truth = {"roles": {f"d{position[i]}": roles[i] for i in range(len(docs))},
             "copied": [f"d{position[i]}" for i in range(len(docs)) if sizes[groups[i]] > 1],
             "pairs": [(f"d{position[c]}", f"d{position[o]}", rate, j) for c, o, rate, j in pairs],
             "leaks": [f"d{position[i]}" for i in leaks]}
    return records, tests, truth


def write_jsonl(records: list[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def near_dup_scores(removed: set[str], truth: dict, also_removed: set[str] = frozenset(),
                    present: set[str] | None = None) -> tuple[float, float]:
    """Recall over planted pairs with Jaccard >= 0.8 (resolved when either side was removed as a
    near or, for copies the edits left identical, an exact duplicate), and the precision of the
    near-duplicate removals (`removed`)."""
    strong = [(c, o) for c, o, _, j in truth["pairs"] if j >= 0.8
              and (present is None or (c in present and o in present))]  # pairs that reached the dedup
    gone = removed | also_removed
    recall = sum(c in gone or o in gone for c, o in strong) / max(1, len(strong))
    planted = set(truth["copied"])  # every member of a group with a planted copy, exact or edited
    precision = sum(r in planted for r in removed) / max(1, len(removed))
    return recall, precision


# ----------------------------------------------------------------------------------- domainlm
def run_domainlm(path: Path, tests: list[str], out: Path) -> dict:
    from domainlm.config import CorpusConfig
    from domainlm.corpus import curate

    config = CorpusConfig(sources=[{"path": str(path)}], keep_dropped=True, heldout_fraction=0.0)
    started = time.perf_counter()
    stats = curate(config, out, {"bench": tests}, workers=1)
    seconds = time.perf_counter() - started
    peak = peak_memory_mib()  # before reading the results back
    dropped = []
    with open(out / "dropped.jsonl", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            dropped.append({"id": record["id"], "reason": record["reason"]})
    # Reader ids are file:line; line n holds generated document d{n-1}.
    ids = {d["id"]: f"d{int(d['id'].rsplit(':', 1)[1]) - 1}" for d in dropped}
    return {"seconds": seconds, "stats": stats, "dropped": {ids[d["id"]]: d["reason"] for d in dropped},
            "peak_memory_mib": peak}


def peak_memory_mib() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss across
    exec, so a child spawned from a parent holding a large corpus would report the parent's size."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the best available


def _isolated(target, *args):
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, target, args))
    process.start()
    result = queue.get()
    process.join()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def _child(queue, target, args):
    try:
        queue.put(target(*args))
    except Exception as err:  # noqa: BLE001 - reported by the parent
        import traceback

        queue.put({"error": f"{err}\n{traceback.format_exc()[-2000:]}"})


# ---------------------------------------------------------------------------------- datatrove
def run_datatrove(path: Path, out: Path, cores: int) -> dict:
    """datatrove 0.10.1's default filters, then its 4-stage MinHash. The per-document stages run as
    `cores` tasks on as many workers (the corpus is pre-split into that many files), so the rate
    per core is the total rate / cores."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    def run(pipeline, name, tasks=1):
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(tasks, cores),
                              logging_dir=str(out / "logs" / name)).run()

    started = time.perf_counter()
    run([JsonlReader(str(path.parent), glob_pattern=path.name + ".part*"),
         GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter(),
         JsonlWriter(str(out / "filtered"), compression=None)], "filter", cores)
    run([JsonlReader(str(out / "filtered")), MinhashDedupSignature(str(out / "sigs"))], "signatures", cores)
    run([MinhashDedupBuckets(str(out / "sigs"), str(out / "buckets"))], "buckets", 14)  # a task per bucket
    run([MinhashDedupCluster(str(out / "buckets"), str(out / "clusters"))], "cluster")
    run([JsonlReader(str(out / "filtered")), MinhashDedupFilter(str(out / "clusters")),
         JsonlWriter(str(out / "deduped"), compression=None)], "filter-dups", cores)  # ranks as in signatures
    seconds = time.perf_counter() - started
    ids = lambda folder: {json.loads(line)["id"] for f in sorted((out / folder).glob("*.jsonl"))  # noqa: E731
                          for line in open(f, encoding="utf-8")}
    filtered, deduped = ids("filtered"), ids("deduped")
    return {"seconds": seconds, "removed_near": sorted(filtered - deduped), "kept": len(deduped),
            "filtered": sorted(filtered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--no-datatrove", action="store_true")
    parser.add_argument("--no-scale", action="store_true", help="skip the 10x memory-growth run")
    args = parser.parse_args()
    summary: dict = {"docs": args.docs}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        records, tests, truth = generate(args.docs)
        write_jsonl(records, folder / "corpus.jsonl")
        ours = _isolated(run_domainlm, folder / "corpus.jsonl", tests, folder / "domainlm")
        removed_near = {i for i, r in ours["dropped"].items() if r == "near_duplicate"}
        removed_exact = {i for i, r in ours["dropped"].items() if r == "duplicate"}
        recall, precision = near_dup_scores(removed_near, truth, removed_exact)
        leak_recall = sum(ours["dropped"].get(i, "").startswith("contaminated") for i in truth["leaks"]) / len(truth["leaks"])
        exact_removed = sum(r == "duplicate" for r in ours["dropped"].values())
        low = [i for i, r in truth["roles"].items() if r == "low-quality"]
        summary.update(
            docs_per_s_per_core=args.docs / ours["seconds"], near_dup_recall=recall, near_dup_precision=precision,
            leak_recall=leak_recall, exact_duplicates_removed=exact_removed,
            planted_exact_duplicates=sum(r == "exact" for r in truth["roles"].values()),
            low_quality_recall=sum(i in ours["dropped"] for i in low) / len(low),
            domainlm_dropped=ours["stats"]["dropped"], peak_memory_mib=ours["peak_memory_mib"],
            planted_pairs_jaccard_ge_0_8=sum(j >= 0.8 for *_, j in truth["pairs"]),
            jaccard_by_edit_rate={str(rate): round(sum(j for _, _, r, j in truth["pairs"] if r == rate)
                                                   / max(1, sum(r == rate for _, _, r, _ in truth["pairs"])), 3)
                                  for rate in EDIT_RATES},
        )
        print(f"domainlm: {summary['docs_per_s_per_core']:.0f} docs/s per core, near-dup recall {recall:.3f} "
              f"precision {precision:.3f}, leak recall {leak_recall:.3f}, peak {ours['peak_memory_mib']:.0f} MiB",
              flush=True)
        if not args.no_scale:
            big, _, _ = generate(args.docs * 10, seed=1)
            write_jsonl(big, folder / "corpus10.jsonl")
            scaled = _isolated(run_domainlm, folder / "corpus10.jsonl", tests, folder / "domainlm10")
            summary["peak_memory_10x_mib"] = scaled["peak_memory_mib"]
            summary["peak_memory_growth_10x"] = scaled["peak_memory_mib"] / ours["peak_memory_mib"]
            summary["docs_per_s_per_core_10x"] = args.docs * 10 / scaled["seconds"]
            print(f"domainlm 10x: {summary['docs_per_s_per_core_10x']:.0f} docs/s per core, peak "
                  f"{scaled['peak_memory_mib']:.0f} MiB ({summary['peak_memory_growth_10x']:.2f}x)", flush=True)
        if not args.no_datatrove and importlib.util.find_spec("datatrove") is None:
            summary["datatrove"] = "skipped: not installed (pip install -e '.[bench]')"
            print("datatrove: skipped, not installed; the comparison needs the bench extra: "
                  "pip install -e '.[bench]'", flush=True)
        elif not args.no_datatrove:
            cores = max(1, min(2, os.cpu_count() or 1))
            for part in range(cores):  # datatrove parallelises over files
                write_jsonl(records[part::cores], folder / f"corpus.jsonl.part{part}")
            theirs = _isolated(run_datatrove, folder / "corpus.jsonl", folder / "datatrove", cores)
            # datatrove's default quality filters drop many generated documents first; its recall is
            # over the planted pairs that both survived them.
            d_recall, d_precision = near_dup_scores(set(theirs["removed_near"]), truth,
                                                    present=set(theirs["filtered"]))
            summary.update(datatrove_docs_per_s_per_core=args.docs / theirs["seconds"] / cores,
                           datatrove_kept_after_filters=len(theirs["filtered"]),
                           datatrove_near_dup_recall=d_recall, datatrove_near_dup_precision=d_precision)
            print(f"datatrove: {summary['datatrove_docs_per_s_per_core']:.0f} docs/s per core, near-dup recall "
                  f"{d_recall:.3f} precision {d_precision:.3f}", flush=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
