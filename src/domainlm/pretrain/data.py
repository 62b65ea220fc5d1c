"""Pretraining data: token shards on disk, documents packed into rows, masking on the fly.

Token shards (`TokenShards`, one folder): every document of the corpus tokenised once into one
flat memory-mapped integer array (`tokens.bin`, uint16 when the vocabulary fits) with a document
index (`offsets.npy`: document i is `tokens[offsets[i]:offsets[i+1]]`) and each document's source
(`sources.npy`, names in `meta.json`). Nothing else is stored: a packing is computed from the
index in milliseconds, for any sequence length.

A packing (`Packing`) cuts each document into chunks of at most `seq_len - 2` tokens; each chunk
becomes a segment `[CLS] chunk [SEP]`, and segments fill rows in corpus order until the next one
does not fit. A batch is gathered from the memory map with numpy fancy indexing (no Python work
per token) as:
- `input_ids` (B, T): the rows, padded at the end;
- `segment_ids` (B, T): the segment each position belongs to; every padding position gets its own
  negative id, so same-segment attention never crosses documents and never reads padding;
- `position_ids` (B, T): position inside the segment (restarts at 0 for each document, so a
  packed document looks exactly like one fed alone);
- `real` (B, T): False on padding.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from domainlm.errors import ConfigError, InputError, ModelError
from domainlm.io import atomic_directory, atomic_write_json, read_json
from domainlm.progress import progress_bar
from domainlm.vocabulary import family_special_tokens, read_tokenizer, unknown_id, untruncated


# ---------------------------------------------------------------------------------- token shards
@dataclass
class TokenShards:
    tokens: np.ndarray  # (N,) uint16 / int32, memory-mapped
    offsets: np.ndarray  # (D + 1,) int64
    sources: np.ndarray  # (D,) int16: index into source_names
    source_names: list[str]
    special: dict[str, int]  # ids of cls, sep, pad

    @staticmethod
    def written(folder: Path) -> bool:
        """Whether `folder` holds complete token shards (`write_token_shards` writes them atomically)."""
        return (folder / "meta.json").exists()

    @classmethod
    def load(cls, folder: Path) -> TokenShards:
        meta = json.loads((folder / "meta.json").read_text())
        tokens = np.memmap(folder / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(meta["num_tokens"],))
        return cls(tokens, np.load(folder / "offsets.npy"), np.load(folder / "sources.npy"),
                   meta["source_names"], meta["special"])

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def folder(self) -> Path | None:
        """The folder the shards were loaded from (None for shards built in memory)."""
        name = getattr(self.tokens, "filename", None)
        return Path(name).parent if name else None

    def source_index(self, name: str) -> int:
        if name not in self.source_names:
            raise ConfigError(f"unknown corpus source '{name}' (the corpus has: {', '.join(self.source_names)})")
        return self.source_names.index(name)

    def pack(self, seq_len: int, source: int | None = None) -> Packing:
        docs = np.arange(self.num_docs) if source is None else np.flatnonzero(self.sources == source)
        return pack(self.offsets[docs], self.offsets[docs + 1], seq_len)

    def batch(self, packing: Packing, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Gather `rows` of `packing` as (B, T) tensors (see the module docstring)."""
        T, (cls_id, sep_id, pad_id) = packing.seq_len, (self.special[k] for k in ("cls", "sep", "pad"))
        rows = np.sort(np.asarray(rows, dtype=np.int64))  # sorted reads are kinder to a memory map
        first, last = packing.row_ptr[rows], packing.row_ptr[rows + 1]
        per_row = last - first
        # All segments of the chosen rows, with the batch row each lands in.
        seg = np.repeat(first - np.cumsum(per_row) + per_row, per_row) + np.arange(per_row.sum())
        batch_row = np.repeat(np.arange(len(rows)), per_row)
        segment_in_row = seg - np.repeat(first, per_row)
        width = packing.seg_len[seg] + 2
        # Every position of every segment: its column in the row and its offset in the segment.
        owner = np.repeat(np.arange(len(seg)), width)
        offset = np.arange(width.sum()) - np.repeat(np.cumsum(width) - width, width)
        column = packing.seg_col[seg][owner] + offset
        body = np.clip(offset - 1, 0, None) + packing.seg_start[seg][owner]
        ids = np.asarray(self.tokens[np.clip(body, 0, len(self.tokens) - 1)], dtype=np.int64)
        ids = np.where(offset == 0, cls_id, np.where(offset == width[owner] - 1, sep_id, ids))

        input_ids = np.full((len(rows), T), pad_id, dtype=np.int64)
        segments = np.broadcast_to(-2 - np.arange(T), (len(rows), T)).copy()  # padding: unique negatives
        positions = np.zeros((len(rows), T), dtype=np.int64)
        where = (batch_row[owner], column)
        input_ids[where], segments[where], positions[where] = ids, segment_in_row[owner], offset
        segments = torch.from_numpy(segments)
        return {"input_ids": torch.from_numpy(input_ids), "segment_ids": segments,
                "position_ids": torch.from_numpy(positions), "real": segments >= 0}


def token_ids(tokenizer: Tokenizer, specials: dict[str, str] | None = None) -> tuple[dict[str, int], str]:
    """(ids of the cls, sep and pad tokens, the token dtype: uint16 when the vocabulary fits).
    `specials` names the tokens (default BERT's or RoBERTa's, whichever the vocabulary holds)."""
    specials = specials or family_special_tokens(tokenizer)
    special = {k: tokenizer.token_to_id(specials[k]) for k in ("cls", "sep", "pad")}
    if None in special.values():
        missing = {k: specials[k] for k, v in special.items() if v is None}
        raise ModelError(f"the tokenizer's vocabulary has no {missing} token (its special tokens: {specials})")
    dtype = np.uint16 if tokenizer.get_vocab_size() <= np.iinfo(np.uint16).max + 1 else np.int32
    return special, np.dtype(dtype).name


def write_token_part(tokenizer: Tokenizer, docs: Iterable[tuple[str, str]], folder: Path, dtype: str,
                     batch_size: int = 1000) -> None:
    """Tokenise `(text, source)` pairs into a part (`folder`, written atomically), streaming:
    tokens.bin, lengths.npy (int64 per document), sources.npy (int16 indices into names.json, in
    the order first seen), names.json last. Memory holds one batch plus 10 bytes per document."""
    tokenizer = untruncated(tokenizer)
    lengths: list[int] = []
    sources: list[int] = []
    names: dict[str, int] = {}
    with progress_bar(desc="tokenize", unit=" docs") as progress, atomic_directory(folder) as tmp, \
            open(tmp / "tokens.bin", "wb") as out:
        batch: list[tuple[str, str]] = []

        def flush() -> None:
            encodings = tokenizer.encode_batch([text for text, _ in batch], add_special_tokens=False)
            for (_, source), encoding in zip(batch, encodings, strict=True):
                out.write(np.asarray(encoding.ids, dtype=dtype).tobytes())
                lengths.append(len(encoding.ids))
                sources.append(names.setdefault(source, len(names)))
            progress.update(len(batch))
            batch.clear()

        for item in docs:
            batch.append(item)
            if len(batch) >= batch_size:
                flush()
        flush()
        out.close()
        np.save(tmp / "lengths.npy", np.asarray(lengths, dtype=np.int64))
        np.save(tmp / "sources.npy", np.asarray(sources, dtype=np.int16))
        atomic_write_json(tmp / "names.json", list(names))


def tokenize_corpus_shard(tokenizer_dir: str, shard: str, folder: str, dtype: str) -> None:
    """A task: one corpus shard (JSON lines of `{"text", "source"}`) into a token part (`write_token_part`)."""
    def docs() -> Iterator[tuple[str, str]]:
        with open(shard, encoding="utf-8") as handle:
            for line in handle:
                doc = json.loads(line)
                yield doc["text"], doc.get("source", "corpus")

    write_token_part(read_tokenizer(tokenizer_dir), docs(), Path(folder), dtype)


def merge_token_parts(parts: list[Path], folder: Path, special: dict[str, int], dtype: str) -> TokenShards:
    """Token shards (`folder`, written atomically) from parts, in order: the same bytes as one
    part holding every document, whatever the parts (sources are numbered in the order first seen)."""
    names: dict[str, int] = {}
    lengths, sources = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int16)]
    with atomic_directory(folder) as tmp:
        with open(tmp / "tokens.bin", "wb") as out:
            for part in parts:
                with open(part / "tokens.bin", "rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 22)
                number = np.array([names.setdefault(n, len(names)) for n in read_json(part / "names.json")] or [0],
                                  dtype=np.int16)
                lengths.append(np.load(part / "lengths.npy"))
                sources.append(number[np.load(part / "sources.npy")])
        offsets = np.zeros(sum(map(len, lengths)) + 1, dtype=np.int64)
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
        np.save(tmp / "offsets.npy", offsets)
        np.save(tmp / "sources.npy", np.concatenate(sources))
        atomic_write_json(tmp / "meta.json", {"dtype": dtype, "num_tokens": int(offsets[-1]),
                                              "source_names": list(names), "special": special})
    if offsets[-1] == 0:
        raise InputError("the corpus is empty: nothing to pretrain on")
    return TokenShards.load(folder)


def write_token_shards(tokenizer: Tokenizer, docs: Iterable[tuple[str, str]], folder: Path,
                       specials: dict[str, str] | None = None, batch_size: int = 1000) -> TokenShards:
    """Tokenise `(text, source)` pairs into `folder` (written atomically), streaming (see
    `write_token_part`). `specials` names the cls, sep and pad tokens (see `token_ids`)."""
    special, dtype = token_ids(tokenizer, specials)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-part.") as scratch:
        write_token_part(tokenizer, docs, Path(scratch) / "part", dtype, batch_size)
        return merge_token_parts([Path(scratch) / "part"], folder, special, dtype)


# ---------------------------------------------------------------------------------------- packing
@dataclass
class Packing:
    seq_len: int
    row_ptr: np.ndarray  # (R + 1,): segments of row r are row_ptr[r]:row_ptr[r+1]
    seg_start: np.ndarray  # (S,) where the segment's body starts in the token array
    seg_len: np.ndarray  # (S,) body length (without [CLS] / [SEP])
    seg_col: np.ndarray  # (S,) column of the segment's [CLS] in its row

    def __len__(self) -> int:
        return len(self.row_ptr) - 1

    def real_tokens(self) -> int:
        return int((self.seg_len + 2).sum())


def pack(starts: np.ndarray, ends: np.ndarray, seq_len: int) -> Packing:
    """Pack documents `tokens[starts[i]:ends[i]]`, in order, into rows of `seq_len` tokens: each
    row takes segments while they fit (greedy, in corpus order)."""
    body = seq_len - 2
    lengths = ends - starts
    lengths_kept = lengths > 0
    starts, lengths = starts[lengths_kept], lengths[lengths_kept]
    if not len(starts):
        raise ValueError("the corpus is empty: nothing to pack")
    chunks = -(-lengths // body)  # ceil
    chunk_index = np.arange(chunks.sum()) - np.repeat(np.cumsum(chunks) - chunks, chunks)
    seg_start = np.repeat(starts, chunks) + chunk_index * body
    seg_len = np.minimum(body, np.repeat(lengths, chunks) - chunk_index * body)
    del chunk_index
    # A row starting at segment i holds segments i..after[i]-1: those whose widths (body + 2) sum to
    # at most seq_len, found for every i at once by one binary search over the running widths.
    # Following `after` from segment 0 is the only loop: one cheap step per row.
    edge = np.zeros(len(seg_len) + 1, dtype=np.int64)
    np.cumsum(seg_len + 2, out=edge[1:])
    after = array("q", (np.searchsorted(edge, edge[:-1] + seq_len, side="right") - 1).tobytes())
    rows, segment, count = array("q"), 0, len(seg_len)
    while segment < count:
        rows.append(segment)
        segment = after[segment]
    del after
    row_ptr = np.append(np.frombuffer(rows, dtype=np.int64), count)
    seg_col = edge[:-1] - np.repeat(edge[row_ptr[:-1]], np.diff(row_ptr))
    return Packing(seq_len, row_ptr, seg_start.astype(np.int64), seg_len.astype(np.int64), seg_col)


PACKING_ARRAYS = ("row_ptr", "seg_start", "seg_len", "seg_col")


def cached_pack(shards: TokenShards, docs: np.ndarray, seq_len: int) -> Packing:
    """`pack` of the documents `docs` of `shards`, in that order. For shards loaded from a folder
    the packing is saved there (a folder per sequence length and document order) the first time
    and memory-mapped from then on, so the ranks of a machine share one copy in the page cache and
    a resumed run does not pack again (`pretrain.prepare` packs before torchrun's ranks start)."""
    offsets = shards.offsets
    if shards.folder is None:
        return pack(offsets[docs], offsets[docs + 1], seq_len)
    key = hashlib.sha256(np.ascontiguousarray(docs, dtype=np.int64).tobytes()).hexdigest()[:16]
    cache = shards.folder / f"packing-{seq_len}-{key}"
    if not cache.exists():
        packing = pack(offsets[docs], offsets[docs + 1], seq_len)
        with atomic_directory(cache) as tmp:
            for name in PACKING_ARRAYS:
                np.save(tmp / f"{name}.npy", getattr(packing, name))
        del packing
    return Packing(seq_len, *(np.load(cache / f"{name}.npy", mmap_mode="r") for name in PACKING_ARRAYS))


def epoch_order(num_rows: int, seed: int, epoch: int, stream: int = 0) -> np.ndarray:
    """The row order of one epoch of one stream: a permutation that depends only on its arguments."""
    return np.random.default_rng([seed, stream, epoch]).permutation(num_rows)


# ---------------------------------------------------------------------------------------- masking
def word_start_markers(tokenizer: Tokenizer) -> tuple[str, str]:
    """(continuation prefix, word-start marker) of a tokenizer's pieces, read off its tokenizer.json
    (one of the two is ""): WordPiece's (or a BPE's) continuing-subword prefix (`##`), or the mark a
    byte-level pre-tokenizer (`Ġ`, an encoded space) or a Metaspace pre-tokenizer (`▁`) puts on a
    word's first piece. ("", "") when it has neither."""
    data = json.loads(tokenizer.to_str())
    if prefix := data["model"].get("continuing_subword_prefix"):
        return prefix, ""
    pre_tokenizer = data["pre_tokenizer"] or {}
    for step in pre_tokenizer.get("pretokenizers", [pre_tokenizer]):
        if step.get("type") == "ByteLevel":
            return "", "\u0120"  # Ġ: GPT-2's byte-to-character map sends the space byte there
        if step.get("type") == "Metaspace":
            return "", step["replacement"]
    return "", ""


def word_start_table(tokenizer: Tokenizer) -> torch.Tensor:
    """(V,) bool: True for tokens that begin a word (whole-word and span masking choose words), from
    the tokenizer's own markers (`word_start_markers`): a WordPiece piece begins a word unless it
    has the continuation prefix; a byte-level BPE or Unigram piece begins one when it has the
    word-start marker, or starts with ASCII punctuation (a word of its own, as BERT's pre-tokenizer
    makes it), and never when it is the unknown piece. In a word-level vocabulary every token is a
    word. ModelError for a tokenizer with neither marker (its words cannot be told apart;
    `pretrain.masking: token` needs no words)."""
    vocab, kind = tokenizer.get_vocab(), json.loads(tokenizer.to_str())["model"]["type"]
    table = torch.ones(tokenizer.get_vocab_size(), dtype=torch.bool)
    if kind == "WordLevel":
        return table
    prefix, marker = word_start_markers(tokenizer)
    if not (prefix or marker):
        raise ModelError(f"whole-word and span masking (pretrain.masking) cannot tell where words start in a {kind} "
                         "vocabulary whose pieces carry no continuation prefix (##) and no word-start marker "
                         "(Ġ, ▁): set pretrain.masking: token")
    for token, index in vocab.items():
        if prefix:
            table[index] = not token.startswith(prefix)
        else:
            first = token[:1]
            table[index] = token.startswith(marker) or (first.isascii() and not first.isalnum())
    if marker and (unknown := unknown_id(tokenizer)) is not None:
        table[unknown] = False  # Unigram's <unk> stands for unseen characters inside a word
    return table


def lexicon_sequences(tokenizer: Tokenizer, words: Iterable[str], max_pieces: int = 6) -> list[list[int]]:
    """Token-id sequences of lexicon words (a word with more than `max_pieces` pieces is dropped)."""
    pieces = [tokenizer.encode(w.strip(), add_special_tokens=False).ids for w in words if w.strip()]
    return sorted({tuple(p) for p in pieces if 0 < len(p) <= max_pieces}, key=lambda p: (len(p), p))


def lexicon_word_starts(input_ids: torch.Tensor, word_start: torch.Tensor, sequences: list[list[int]]) -> torch.Tensor:
    """(B, T) bool: True at the first piece of every whole word that is in the lexicon.
    Matched by hashing each window of m pieces (one tensor op per distinct length m)."""
    B, T = input_ids.shape
    starts = word_start[input_ids]
    # A word of m pieces ends where the next token starts a word (or at the row's end).
    next_starts = torch.cat([starts[:, 1:], torch.ones(B, 1, dtype=torch.bool)], dim=1)
    hits = torch.zeros(B, T, dtype=torch.bool)
    multipliers = torch.tensor([pow(1_000_003, i, 2**61 - 1) for i in range(8)])  # int64 sums wrap: a hash
    for m in sorted({len(s) for s in sequences}):
        if m > T:
            break
        table = torch.tensor([s for s in sequences if len(s) == m], dtype=torch.int64)
        windows = input_ids.unfold(1, m, 1)  # (B, T - m + 1, m)
        found = torch.isin((windows * multipliers[:m]).sum(-1), (table * multipliers[:m]).sum(-1))
        whole = starts[:, : T - m + 1] & next_starts[:, m - 1 :]
        if m > 1:  # no word boundary inside the window
            inner = starts.unfold(1, m, 1)[..., 1:]
            whole &= ~inner.any(-1)
        hits[:, : T - m + 1] |= found & whole
    return hits


MAX_SPAN_WORDS = 10


def _lexicon_word_rates(starts: torch.Tensor, maskable: torch.Tensor, word_index: torch.Tensor,
                        preferred: torch.Tensor, rate: float, preferred_rate: float) -> torch.Tensor:
    """(B, words) probability of masking each word: per row, lexicon words at `preferred_rate` (at
    most `rate`'s budget), the other words share what is left."""
    B, T = starts.shape
    real_words = (starts & maskable).sum(1, keepdim=True).clamp_min(1)
    lex = preferred & starts & maskable
    lex_rate = torch.minimum(torch.full_like(real_words, preferred_rate, dtype=torch.float),
                             rate * real_words / lex.sum(1, keepdim=True).clamp_min(1))
    rest_rate = ((rate * real_words - lex_rate * lex.sum(1, keepdim=True))
                 / (real_words - lex.sum(1, keepdim=True)).clamp_min(1)).clamp(0, 1)
    word_rate = torch.where(lex, lex_rate, rest_rate)  # valid at each word's first piece
    # Word w's rate is the one at its first piece.
    first_piece = torch.zeros(B, T, dtype=torch.long)
    first_piece.scatter_(1, torch.where(starts, word_index, T - 1), torch.arange(T).expand(B, T))
    return word_rate.gather(1, first_piece)


def _span_words(draws: torch.Tensor, rate: float, span_mean: float, generator: torch.Generator) -> torch.Tensor:
    """(B, words) bool: words covered by spans that begin where `draws` < rate / span_mean, with
    geometric lengths of mean `span_mean` (at most MAX_SPAN_WORDS), SpanBERT's masking."""
    B, T = draws.shape
    p = 1.0 / span_mean
    span_begins = draws < rate * p
    uniform = torch.rand(B, T, generator=generator).clamp_min(1e-12)
    lengths = (torch.log(uniform) / math.log(1 - p)).floor() + 1 if p < 1 else torch.ones(B, T)
    lengths = lengths.clamp(max=MAX_SPAN_WORDS)
    chosen_words = torch.zeros(B, T, dtype=torch.bool)
    for k in range(MAX_SPAN_WORDS):  # word w is covered if a span began at w - k with length > k
        chosen_words[:, k:] |= (span_begins & (lengths > k))[:, : T - k]
    return chosen_words


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    word_start: torch.Tensor,
    rate: float,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
    mode: str = "whole-word",
    span_mean: float = 3.0,
    preferred: torch.Tensor | None = None,
    preferred_rate: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose `rate` of the words (or tokens, for mode "token"), then replace 80% of
    the chosen tokens by [MASK], 10% by a random token, and keep 10%.

    mode: "whole-word" chooses words independently; "span" chooses runs of words whose lengths are
    geometric with mean `span_mean` (clipped at 10 words), starting often enough that about `rate`
    of the words are covered; "token" chooses word pieces independently.
    preferred: (B, T) bool at the first piece of lexicon words (whole-word mode); those words are
    chosen with probability `preferred_rate`, the others less, so that each row still masks about
    `rate` of its words (lexicon-guided masking).
    input_ids, maskable: (B, T); maskable is False on special tokens and padding.
    Returns (masked input ids, labels) with labels -100 where nothing is predicted.
    """
    B, T = input_ids.shape
    if mode == "token":
        chosen = (torch.rand(B, T, generator=generator) < rate) & maskable
    else:
        starts = word_start[input_ids] | ~maskable  # special tokens start their own "word"
        word_index = torch.cumsum(starts.long(), dim=1) - 1  # (B, T) word number of each token
        draws = torch.rand(B, T, generator=generator)  # draw w decides word w
        if mode == "whole-word" and preferred is not None:
            chosen_words = draws < _lexicon_word_rates(starts, maskable, word_index, preferred, rate, preferred_rate)
        elif mode == "whole-word":
            chosen_words = draws < rate
        elif mode == "span":
            chosen_words = _span_words(draws, rate, span_mean, generator)
        else:
            raise ValueError(f"unknown masking mode '{mode}'")
        chosen = torch.gather(chosen_words, 1, word_index) & maskable
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    action = torch.rand(B, T, generator=generator)
    random_tokens = torch.randint(vocab_size, (B, T), generator=generator)
    masked = torch.where(chosen & (action < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_tokens, masked)
    return masked, labels
