import gzip
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

WORDS = ("protein kinase binds receptor cell gene expression tumor patient therapy dose enzyme "
         "inhibitor pathway mutation clinical trial response signal membrane").split()


def synthetic_texts(count: int, seed: int = 0) -> list[str]:
    """Deterministic pseudo-sentences over a small vocabulary (enough to train a tokenizer)."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 30))) + "." for _ in range(count)]


def prose_texts(count: int, seed: int) -> list[str]:
    """`synthetic_texts` with English stop words among the words (as real text has: Gopher's
    stop-word rule drops long documents without any)."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(("the", "of", "and", "with", "to")) if i % 3 == 1 else word
                     for i, word in enumerate(text.split())) for text in synthetic_texts(count, seed=seed)]


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> dict:
    """A complete, fast recipe over synthetic files written into tmp_path."""
    corpus = tmp_path / "corpus.txt.gz"
    with gzip.open(corpus, "wt") as handle:
        handle.write("\n".join(synthetic_texts(600)) + "\n")
    import random

    rng = random.Random(1)
    for split, n in (("train", 60), ("dev", 20), ("test", 20)):
        with open(tmp_path / f"cls-{split}.jsonl", "w") as handle:
            for text in synthetic_texts(n, seed=hash(split) % 1000):
                label = "onc" if "tumor" in text else "other"
                handle.write(json.dumps({"text": text, "label": label}) + "\n")
        with open(tmp_path / f"ner-{split}.tsv", "w") as handle:
            for text in synthetic_texts(n, seed=rng.randint(0, 10**6)):
                for word in text.rstrip(".").split():
                    handle.write(f"{word}\t{'B-CHEM' if word in ('inhibitor', 'enzyme') else 'O'}\n")
                handle.write("\n")
    return {
        "name": "tiny",
        "run_dir": str(tmp_path / "run"),
        "corpus": {"sources": [{"path": str(corpus)}], "min_words": 3, "heldout_fraction": 0.05},
        "tokenizer": {"vocab_size": 200, "min_frequency": 1},
        "model": {"preset": "micro", "max_position": 64},
        "pretrain": {"max_steps": 6, "batch_size": 8, "seq_len": 64, "checkpoint_every": 3, "log_every": 2},
        "tasks": [
            {"name": "cls", "type": "classification", "format": "jsonl",
             **{s: str(tmp_path / f"cls-{s}.jsonl") for s in ("train", "dev", "test")}},
            {"name": "ner", "type": "token-classification", "format": "conll",
             **{s: str(tmp_path / f"ner-{s}.tsv") for s in ("train", "dev", "test")}},
        ],
        "evaluate": {"seeds": [0, 1], "epochs": 1, "batch_size": 16, "max_length": 48, "lr": 1e-3},
    }


@pytest.fixture(scope="module")
def tokenizer():
    """A WordPiece vocabulary of 150 entries over `synthetic_texts` (a module needing another defines its own)."""
    from domainlm.config import TokenizerConfig
    from domainlm.tokenizer import train_wordpiece

    return train_wordpiece(synthetic_texts(300), TokenizerConfig(vocab_size=150, min_frequency=1))


@pytest.fixture(scope="module")
def shards(tokenizer, tmp_path_factory):
    """Token shards of 120 synthetic documents: a quarter from the source "domain", the rest "general"."""
    from domainlm.pretrain.data import write_token_shards

    texts = synthetic_texts(120, seed=1)
    docs = ((t, "domain" if i % 4 == 0 else "general") for i, t in enumerate(texts))
    return write_token_shards(tokenizer, docs, tmp_path_factory.mktemp("shards") / "shards")


def tiny_family_model(family: str, tiny_model: Path, folder: Path) -> Path:
    """A tiny randomly initialised model of another encoder family (roberta, electra, modernbert)
    saved into `folder` with the tokenizer files of `tiny_model` (the same vocabulary)."""
    import shutil

    import transformers

    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    size = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                vocab_size=transformers.AutoConfig.from_pretrained(tiny_model).vocab_size)
    if family == "roberta":
        model = transformers.RobertaForMaskedLM(transformers.RobertaConfig(max_position_embeddings=80, pad_token_id=0, **size))
    elif family == "electra":
        model = transformers.ElectraForPreTraining(transformers.ElectraConfig(embedding_size=16, **size))
    else:
        model = transformers.ModernBertForMaskedLM(transformers.ModernBertConfig(
            pad_token_id=0, cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3, global_attn_every_n_layers=1,
            **size))
    model.save_pretrained(folder)
    return folder

