"""Hashing for deduplication and decontamination: words -> shingles / n-grams -> MinHash.

Every document is split once into lowercased words, each word hashed once (xxhash, stable across
processes and machines); word n-grams are then hashed with vectorised numpy arithmetic, so the
cost per document is one Python call per word. The same n-gram hashing serves MinHash shingles
(near-duplicates) and long n-grams (decontamination).

MinHash: one 32-bit hash per permutation, `min((a * shingle + b) >> 32)` over the shingles, a
multiply-shift family over 64-bit integers. It is written here rather than taken from datasketch
because datasketch 2.0 computes ~1,200 signatures/s per core on abstracts (with a fast hash
function; 850 with its default SHA-1) against ~3,000 for this vectorised form (docs/benchmarks.md).
Near-duplicate search is LSH banding over the signatures of the whole corpus: sort each band's
keys, compare members of a bucket, keep one document per connected cluster.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import xxhash
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from domainlm.corpus.normalize import normalize_text

# A word is a run of word characters: punctuation and the spacing around it never count, so a
# tokenised "phosphate ( EMP ) ," and the running text "phosphate (EMP)," give the same words.
WORD = re.compile(r"\w+")
_MIX = np.uint64(0x100000001B3)  # FNV prime: combines word hashes into an n-gram hash (wrapping)


_WORD_CACHE: dict[str, int] = {}  # word -> hash: text is Zipfian, so most lookups hit


def word_hashes(text: str) -> np.ndarray:
    """(words,) uint64: the hash of each lowercased word."""
    words = WORD.findall(text.lower())
    cache = _WORD_CACHE
    if len(cache) > 2_000_000:  # bounded: a few hundred MB at most
        cache.clear()
    for word in words:
        if word not in cache:
            cache[word] = xxhash.xxh64_intdigest(word.encode())  # xxhash 4 takes bytes only
    return np.array([cache[w] for w in words], dtype=np.uint64)


_INVERSE = pow(int(_MIX), -1, 2**64)  # the multiplier is odd, so it is invertible modulo 2^64
_POWERS = {"up": np.ones(1, dtype=np.uint64), "down": np.ones(1, dtype=np.uint64)}


def _powers(length: int) -> tuple[np.ndarray, np.ndarray]:
    """_MIX^k and _MIX^-k for k < length (wrapping uint64), grown on demand."""
    if len(_POWERS["up"]) < length:
        size = max(length, 2 * len(_POWERS["up"]))
        _POWERS["up"] = np.cumprod(np.r_[1, np.full(size - 1, _MIX)].astype(np.uint64), dtype=np.uint64)
        _POWERS["down"] = np.cumprod(np.r_[1, np.full(size - 1, _INVERSE, dtype=np.uint64)].astype(np.uint64),
                                     dtype=np.uint64)
    return _POWERS["up"], _POWERS["down"]


def ngram_hashes(words: np.ndarray, n: int) -> np.ndarray:
    """(max(0, words - n + 1),) uint64: one hash per run of `n` consecutive words,
    sum_j words[i + j] * M^(n - 1 - j) (wrapping), computed for every i with one prefix sum:
    M^(n - 1 + i) * (Q[i + n] - Q[i]) where Q are prefix sums of words[k] * M^-k."""
    count = len(words) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    up, down = _powers(len(words) + n)
    prefix = np.zeros(len(words) + 1, dtype=np.uint64)
    np.cumsum(words * down[: len(words)], out=prefix[1:])
    return up[n - 1 : n - 1 + count] * (prefix[n : n + count] - prefix[:count])


@lru_cache(maxsize=4)
def _permutations(permutations: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, permutations, dtype=np.uint64) | np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, permutations, dtype=np.uint64)
    return a, b


def minhash(words: np.ndarray, shingle_words: int, permutations: int) -> np.ndarray:
    """(permutations,) uint32 MinHash signature of a document's word shingles. A document shorter
    than one shingle is one shingle of all its words; an empty one gets the all-max signature."""
    shingles = ngram_hashes(words, min(shingle_words, max(1, len(words))))
    a, b = _permutations(permutations)
    if not len(shingles):
        return np.full(permutations, np.iinfo(np.uint32).max, dtype=np.uint32)
    return ((shingles[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)).min(axis=0).astype(np.uint32)


def lsh_bands(threshold: float, permutations: int, miss_weight: float = 0.95) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= permutations minimising the weighted chances of missing a
    pair above the threshold and of a candidate below it, integrated over similarity (as datasketch
    does). Misses weigh 0.95: a false candidate only costs a signature comparison."""
    similarities = np.linspace(0, 1, 201)
    best, best_cost = (1, permutations), np.inf
    for rows in range(1, permutations + 1):
        bands = permutations // rows
        candidate = 1 - (1 - similarities**rows) ** bands
        false_pos = np.trapezoid(np.where(similarities < threshold, candidate, 0), similarities)
        false_neg = np.trapezoid(np.where(similarities >= threshold, 1 - candidate, 0), similarities)
        cost = (1 - miss_weight) * false_pos + miss_weight * false_neg
        if cost < best_cost:
            best, best_cost = (bands, rows), cost
    return best


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) uint64: one key per band of `rows` signature values."""
    signatures = signatures.astype(np.uint64)
    keys = np.zeros((len(signatures), bands), dtype=np.uint64)
    for band in range(bands):
        for j in range(rows):
            keys[:, band] = keys[:, band] * _MIX + signatures[:, band * rows + j]
    return keys


# Candidates from a shared band are confirmed when their signatures agree on at least
# threshold - VERIFY_SLACK of the permutations: with 128 permutations the estimate of a Jaccard of
# 0.8 has a standard deviation of ~0.035, so a pair at the threshold is kept, while an accidental
# band collision (agreement near the true, low similarity) is rejected.
VERIFY_SLACK = 0.1


def bucket_pairs(keys: np.ndarray, signature_of, threshold: float) -> np.ndarray:
    """(pairs, 2) int64 positions (first, other) of documents confirmed similar in one LSH band.

    keys: (N,) band keys; documents sharing a key form a bucket, whose members (in position order)
    are compared with its first member: `signature_of(positions)` -> (len, permutations)
    signatures, agreeing on at least `threshold - VERIFY_SLACK` of them."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    pairs = []
    for start, size in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist(), strict=True):
        members = order[start : start + size]
        signatures = signature_of(members)
        agreement = (signatures[1:] == signatures[0]).mean(axis=1)
        similar = members[1:][agreement >= threshold - VERIFY_SLACK]
        pairs.append(np.stack([np.full(len(similar), members[0]), similar], axis=1))
    return np.concatenate(pairs).astype(np.int64) if pairs else np.zeros((0, 2), dtype=np.int64)


def clusters(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(removed, kept): over the connected clusters of the pairs' graph, every member but the
    lowest position, and that lowest member, both sorted by `removed`. Memory grows with the
    number of pairs, not of documents (scipy's connected components on the relabelled nodes)."""
    nodes, inverse = np.unique(pairs, return_inverse=True)
    inverse = inverse.reshape(-1, 2)
    graph = coo_matrix((np.ones(len(inverse), dtype=np.int8), (inverse[:, 0], inverse[:, 1])),
                       shape=(len(nodes), len(nodes)))
    count, labels = connected_components(graph, directed=False)
    lowest = np.full(count, len(nodes))
    np.minimum.at(lowest, labels, np.arange(len(nodes)))  # nodes are sorted: the lowest position
    kept = lowest[labels]
    removed = np.flatnonzero(kept != np.arange(len(nodes)))
    return nodes[removed], nodes[kept[removed]]


def near_duplicates(band_columns, signature_of, threshold: float) -> dict[int, int]:
    """{removed document: the document kept in its cluster} over documents 0..N-1.

    band_columns: one (N,) array of band keys per band (e.g. `keys.T`; a generator is fine, so
    only one band need be in memory); signature_of as `bucket_pairs`. Confirmed pairs of every
    band are joined into clusters, each keeping its lowest index (the first in corpus order).
    """
    pairs = [bucket_pairs(column, signature_of, threshold) for column in band_columns]
    if not pairs:
        return {}
    removed, kept = clusters(np.concatenate(pairs))
    return dict(zip(removed.tolist(), kept.tolist(), strict=True))


# `corpus.normalization`'s choices: a dev/test text is looked for in each form a corpus could hold it.
UNICODE_FORMS = ("NFKC", "NFC", "none")


def corpus_forms(text: str) -> list[str]:
    """`text` as the corpus stage's normalisation would leave it under each `corpus.normalization`
    (Unicode form, control characters dropped, spaces collapsed), each distinct form once: "5 µg"
    is "5 μg" in an NFKC corpus (the default) but stays "5 µg" in an NFC one."""
    return list(dict.fromkeys(normalize_text(text, form) for form in UNICODE_FORMS))


class ContaminationIndex:
    """The word n-grams of evaluation texts, to find corpus documents that contain any of them.

    A text of at least `n` words is looked for by its n-grams (GPT-3's decontamination); a shorter
    one of at least `min_words` words as a whole (its one m-gram, m its length); a text shorter
    than that cannot be told from common phrases and is only counted (`coverage`). Each text is
    looked for in every Unicode form a corpus could hold it in (`corpus_forms`), counted once."""

    def __init__(self, texts_by_task: dict[str, list[str]], n: int, min_words: int = 8):
        self.n, self.tasks = n, list(texts_by_task)
        self.coverage = {"texts": 0, "ngram": n, "whole": 0, "too_short": 0, "min_words": min_words}
        found: dict[int, tuple[list, list]] = {}  # gram length -> (hash arrays, owner arrays)
        for task_index, texts in enumerate(texts_by_task.values()):
            for text in texts:
                forms = [words for words in map(word_hashes, corpus_forms(text)) if len(words) >= min(n, min_words)]
                self.coverage["texts"] += 1
                if not forms:
                    self.coverage["too_short"] += 1
                    continue
                self.coverage["whole"] += len(forms[0]) < n
                for words in forms:
                    hashes, owners = found.setdefault(min(n, len(words)), ([], []))
                    hashes.append(ngram_hashes(words, min(n, len(words))))
                    owners.append(np.full(len(hashes[-1]), task_index, dtype=np.int32))
        self.grams = {}  # length -> (sorted hashes, their tasks), the full n first
        for length in sorted(found, reverse=True):
            hashes, owners = np.concatenate(found[length][0]), np.concatenate(found[length][1])
            order = np.argsort(hashes, kind="stable")
            self.grams[length] = (hashes[order], owners[order])

    def __len__(self) -> int:
        return sum(len(hashes) for hashes, _ in self.grams.values())

    def match(self, words: np.ndarray) -> str | None:
        """The task whose dev/test text this document contains (an n-gram of it, or all of a
        short one), or None."""
        for length, (hashes, owners) in self.grams.items():
            grams = ngram_hashes(words, length)
            if not len(grams):
                continue
            where = np.searchsorted(hashes, grams).clip(max=len(hashes) - 1)
            hit = np.flatnonzero(hashes[where] == grams)
            if len(hit):
                return self.tasks[owners[where[hit[0]]]]
        return None
