"""Vocabularies shared by the stages: BERT's special tokens, reading and saving tokenizers, finding a
tokenizer directory's special tokens, and measuring how well a vocabulary fits a text.

Fit (Rust et al. 2021; PubMedBERT's argument for an in-domain vocabulary): *fertility* is the number
of sub-word pieces per word, and the *split share* the share of words cut into more than one piece;
a vocabulary that has whole-word entries for a domain's terms scores low on both.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from domainlm.config import resolve_path

# Role -> token, in the order they take the first ids of a vocabulary trained here.
BERT_SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
ROBERTA_SPECIAL_TOKENS = {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>", "mask": "<mask>"}
_WORD = re.compile(r"\w+")


def read_tokenizer(path: str | Path) -> Tokenizer:
    """A `tokenizers.Tokenizer` from a tokenizer.json or a model directory holding one (`pkg://` paths
    too); FileNotFoundError when there is none."""
    path = resolve_path(str(path))
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    return Tokenizer.from_file(str(file))


def untruncated(tokenizer: Tokenizer) -> Tokenizer:
    """A copy that neither truncates nor pads (saved tokenizers may: MiniLM's truncates at 128)."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def save_tokenizer(tokenizer: Tokenizer, folder: Path, specials: dict[str, str], model_max_length: int) -> None:
    """Write tokenizer.json plus the files `transformers.AutoTokenizer` reads; `specials` maps the
    roles pad / unk / cls / sep / mask to their tokens."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length,
                                   **{f"{role}_token": token for role, token in specials.items()})
    fast.save_pretrained(str(folder))


def special_tokens(tokenizer_dir: Path) -> dict[str, str]:
    """The pad / unk / cls / sep / mask token strings of a Hugging Face tokenizer directory: from
    special_tokens_map.json and tokenizer_config.json, else BERT's or RoBERTa's, whichever the
    vocabulary holds."""
    tokenizer_dir = Path(tokenizer_dir)
    declared: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (tokenizer_dir / name).exists():
            for key, value in json.loads((tokenizer_dir / name).read_text()).items():
                if key.endswith("_token") and key[:-6] in BERT_SPECIAL_TOKENS and value:
                    declared[key[:-6]] = value["content"] if isinstance(value, dict) else value
    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab()
    defaults = ROBERTA_SPECIAL_TOKENS if "<s>" in vocab and "[CLS]" not in vocab else BERT_SPECIAL_TOKENS
    return {role: declared.get(role, default) for role, default in defaults.items()}


def vocabulary_fit(tokenizer: Tokenizer, texts: list[str]) -> dict[str, Any]:
    """Fertility (pieces per word) and share of words split, over the words (`\\w+` runs) of `texts`.

    Words are found by one rule for every tokenizer, then handed over pre-split, so two vocabularies
    are compared on exactly the same words. Returns {"vocab_size", "words", "fertility",
    "split_share", "most_split": the 15 words most often split}.
    """
    word_lists = [w for w in (_WORD.findall(t) for t in texts) if w]
    pieces = words = split = 0
    split_counts: Counter[str] = Counter()
    encodings = untruncated(tokenizer).encode_batch(word_lists, is_pretokenized=True, add_special_tokens=False)
    for encoding, word_list in zip(encodings, word_lists, strict=True):
        per_word = Counter(i for i in encoding.word_ids if i is not None)
        for index, word in enumerate(word_list):
            count = per_word.get(index, 0)
            pieces += count
            words += 1
            if count > 1:
                split += 1
                split_counts[word.lower()] += 1
    return {
        "vocab_size": tokenizer.get_vocab_size(),
        "words": words,
        "fertility": pieces / max(words, 1),
        "split_share": split / max(words, 1),
        "most_split": [w for w, _ in split_counts.most_common(15)],
    }
