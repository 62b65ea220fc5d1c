"""Pretrain stage: masked language modelling of a BERT-style encoder from scratch.

Artifacts in `runs/<name>/pretrain/`:
- `data/`: the corpus tokenised and packed once (memory-mapped .npy arrays).
- `checkpoints/step-NNNNNNNN/`: weights (safetensors), optimizer, scheduler, RNG and data position;
  the latest `keep_checkpoints` are kept and a killed run resumes from the newest.
- `history.json`: per-step loss and learning rate, and throughput.
- `export/`: a Hugging Face directory (`BertForMaskedLM` + tokenizer) for the evaluate stage.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from domainlm.artifacts import atomic_directory, atomic_write_json, read_json
from domainlm.config import RunConfig
from domainlm.corpus import iter_corpus_texts
from domainlm.pretrain.data import PackedData, pack_documents, tokenize_documents
from domainlm.pretrain.model import Encoder, EncoderConfig, segment_attention_mask, to_hf_state_dict
from domainlm.pretrain.trainer import Trainer
from domainlm.tokenizer import load_tokenizer


def encoder_config(config: RunConfig, vocab_size: int, pad_id: int) -> EncoderConfig:
    sizes = config.model.resolved()
    return EncoderConfig(
        vocab_size=vocab_size, max_position=config.model.max_position, dropout=config.model.dropout,
        pad_token_id=pad_id, **sizes,
    )


def prepare_data(config: RunConfig, out: Path) -> PackedData:
    """Tokenise and pack the corpus once; reuse the packed arrays on resume."""
    folder = out / "data"
    if not (folder / "tokens.npy").exists():
        tokenizer = load_tokenizer(config.directory / "tokenizer")
        tokens, offsets = tokenize_documents(tokenizer, iter_corpus_texts(config.directory / "corpus"))
        ids = {t: tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")}
        packed = pack_documents(tokens, offsets, config.pretrain.seq_len, ids["[CLS]"], ids["[SEP]"], ids["[PAD]"])
        PackedData(*packed).save(folder)
    return PackedData.load(folder)


def export_model(model: Encoder, tokenizer_dir: Path, out: Path, config: EncoderConfig | None = None) -> float:
    """Write a `transformers` BertForMaskedLM directory and check that stock transformers,
    loading it from disk, gives our logits. Returns the max abs logit difference.
    `config` (default: the model's) is what the exported config.json says, e.g. fine-tuning dropout."""
    from transformers import AutoModelForMaskedLM, BertForMaskedLM

    hf = BertForMaskedLM((config or model.config).to_hf())
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model), strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise RuntimeError(f"export mismatch: missing {missing}, unexpected {unexpected}")
    with atomic_directory(out) as tmp:
        hf.save_pretrained(str(tmp), safe_serialization=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (tokenizer_dir / name).exists():
                shutil.copy(tokenizer_dir / name, tmp / name)
    return logit_difference(model, AutoModelForMaskedLM.from_pretrained(str(out)))


@torch.no_grad()
def logit_difference(model: Encoder, hf_model, batch_size: int = 2, length: int = 24) -> float:
    """Max |logits(ours) - logits(hf)| on a random padded batch (fp32, eval mode, real tokens)."""
    model, hf_model = model.float().eval().cpu(), hf_model.float().eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (batch_size, length), generator=generator)
    lengths = torch.tensor([length, length // 2])[:batch_size]
    real = torch.arange(length)[None, :] < lengths[:, None]
    ids = torch.where(real, ids, torch.full_like(ids, model.config.pad_token_id))
    segments = torch.where(real, 0, -1 - torch.arange(length).expand_as(ids))
    ours = model.mlm_logits(model(ids, torch.arange(length).expand_as(ids), segment_attention_mask(segments)))
    theirs = hf_model(input_ids=ids, attention_mask=real.long()).logits
    return float((ours - theirs)[real].abs().max())


def run(config: RunConfig, out: Path) -> dict[str, Any]:
    if config.pretrain.threads:
        torch.set_num_threads(config.pretrain.threads)
    tokenizer_dir = config.directory / "tokenizer"
    tokenizer = load_tokenizer(tokenizer_dir)
    data = prepare_data(config, out)
    model_config = encoder_config(config, tokenizer.get_vocab_size(), tokenizer.token_to_id("[PAD]"))
    train_config = model_config
    if config.pretrain.dropout is not None:
        train_config = dataclasses.replace(model_config, dropout=config.pretrain.dropout)
    trainer = Trainer(train_config, config.pretrain, data, tokenizer, out / "checkpoints", seed=config.seed)
    trainer.resume_if_possible()
    started = time.time()
    trainer.train()
    atomic_write_json(out / "history.json", trainer.history())
    difference = export_model(trainer.model, tokenizer_dir, out / "export", config=model_config)
    if difference > 1e-4:
        raise RuntimeError(f"exported model disagrees with the training model: max |Δlogit| = {difference:.2e}")
    summary = trainer.summary()
    summary.update(export_max_abs_logit_diff=difference, train_seconds=round(time.time() - started, 2),
                   parameters=sum(p.numel() for p in trainer.model.parameters()))
    atomic_write_json(out / "summary.json", summary)
    print(f"pretrain: {summary['steps']} steps, final loss {summary['final_loss']:.3f}, "
          f"{summary['real_tokens_per_s']:.0f} real tokens/s, export max |Δlogit| {difference:.1e}")
    return summary


def load_summary(pretrain_dir: Path) -> dict[str, Any]:
    return read_json(pretrain_dir / "summary.json")
