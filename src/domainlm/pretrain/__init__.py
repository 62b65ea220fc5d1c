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
from tokenizers import Tokenizer

from domainlm.artifacts import atomic_directory, atomic_write_json, read_json
from domainlm.config import RunConfig, resolve_path
from domainlm.corpus import iter_corpus_documents, iter_corpus_texts
from domainlm.pipeline import barrier, rank
from domainlm.pretrain.data import TokenShards, write_token_shards
from domainlm.pretrain.electra import Electra, to_hf_electra
from domainlm.pretrain.model import Encoder, EncoderConfig, segment_attention_mask, to_hf_masked_lm
from domainlm.pretrain.trainer import Trainer
from domainlm.tokenizer import load_tokenizer

BERT_SPECIALS = {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "mask": "[MASK]", "unk": "[UNK]"}


def encoder_config(config: RunConfig, vocab_size: int, pad_id: int) -> EncoderConfig:
    sizes = config.model.resolved()
    return EncoderConfig(
        vocab_size=vocab_size, max_position=config.model.max_position, dropout=config.model.dropout,
        pad_token_id=pad_id, **sizes,
    )


def prepare_data(config: RunConfig, tokenizer: Tokenizer, specials: dict[str, str], out: Path) -> TokenShards:
    """Tokenise the corpus once into token shards; reuse them on resume."""
    folder = out / "data"
    if not (folder / "meta.json").exists():
        docs = ((d["text"], d.get("source", "corpus")) for d in iter_corpus_documents(config.directory / "corpus"))
        write_token_shards(tokenizer, docs, folder, specials=specials)
    return TokenShards.load(folder)


def initial_model(config: RunConfig, out: Path, write: bool = True) -> tuple[Encoder | None, Path, dict[str, str], dict[str, Any]]:
    """With `model.init_from`: the checkpoint as our encoder (vocabulary extended if asked) and the
    tokenizer folder it uses. Otherwise (None, the domain tokenizer, BERT special tokens, {})."""
    domain_tokenizer_dir = config.directory / "tokenizer"
    if not config.model.init_from:
        return None, domain_tokenizer_dir, BERT_SPECIALS, {}
    from domainlm.pretrain.hf_init import (
        extend_vocabulary,
        load_hf_encoder,
        save_tokenizer_dir,
        special_tokens,
    )

    source = resolve_path(config.model.init_from)
    model, info = load_hf_encoder(source)
    specials = special_tokens(source)
    tokenizer_dir = out / "tokenizer"
    if config.model.extend_vocab:
        texts = iter_corpus_texts(config.directory / "corpus")
        model, tokenizer, added = extend_vocabulary(model, load_tokenizer(source), load_tokenizer(domain_tokenizer_dir),
                                                    texts, config.model.extend_vocab)
        info["added_tokens"] = len(added)
        info["added_examples"] = added[:30]
        if write:
            with atomic_directory(tokenizer_dir) as tmp:
                save_tokenizer_dir(tokenizer, tmp, like=source)
    elif write:
        with atomic_directory(tokenizer_dir) as tmp:
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
                if (source / name).exists():
                    shutil.copy(source / name, tmp / name)
    return model, tokenizer_dir, specials, info


def export_model(model: Encoder | Electra, tokenizer_dir: Path, out: Path, config: EncoderConfig | None = None) -> float:
    """Write a `transformers` directory (BertForMaskedLM / RobertaForMaskedLM, or ELECTRA's
    discriminator as ElectraForPreTraining) and check that stock transformers, loading it from
    disk, gives our outputs. Returns the max abs difference. `config` (default: the model's) is
    what the exported config.json says, e.g. fine-tuning dropout."""
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining

    hf = to_hf_electra(model, config) if isinstance(model, Electra) else to_hf_masked_lm(model, config)
    with atomic_directory(out) as tmp:
        hf.save_pretrained(str(tmp), safe_serialization=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            if (tokenizer_dir / name).exists():
                shutil.copy(tokenizer_dir / name, tmp / name)
    loader = AutoModelForPreTraining if isinstance(model, Electra) else AutoModelForMaskedLM
    return output_difference(model, loader.from_pretrained(str(out)))


@torch.no_grad()
def output_difference(model: Encoder | Electra, hf_model, batch_size: int = 2, length: int = 24) -> float:
    """Max |ours - hf| of the output logits (MLM, or ELECTRA's replaced-token logits) on a random
    right-padded batch (fp32, eval mode, real tokens)."""
    model, hf_model = model.float().eval().cpu(), hf_model.float().eval()
    c = model.config
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, c.vocab_size, (batch_size, length), generator=generator)
    lengths = torch.tensor([length, length // 2])[:batch_size]
    real = torch.arange(length)[None, :] < lengths[:, None]
    ids = torch.where(real, ids, torch.full_like(ids, c.pad_token_id))
    segments = torch.where(real, 0, -1 - torch.arange(length).expand_as(ids))
    positions, attn = torch.arange(length).expand_as(ids), segment_attention_mask(segments)
    if isinstance(model, Electra):
        ours = model.rtd_logits(model.discriminator(ids, positions, attn))
    else:
        ours = model.mlm_logits(model(ids, positions, attn))
    theirs = hf_model(input_ids=ids, attention_mask=real.long()).logits
    return float((ours - theirs)[real].abs().max())


def set_dropout(model: torch.nn.Module, p: float) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        if hasattr(module, "attn_dropout"):
            module.attn_dropout = p


def run(config: RunConfig, out: Path) -> dict[str, Any]:
    if config.experiment:  # several arms, each its own small run (see domainlm.experiment)
        from domainlm import experiment

        return experiment.run(config, out)
    if config.pretrain.threads:
        torch.set_num_threads(config.pretrain.threads)
    main_process = rank() == 0  # under torchrun, rank 0 writes; the others wait at the barriers
    model, tokenizer_dir, specials, init_info = initial_model(config, out, write=main_process)
    barrier()
    if model is not None and config.pretrain.objective == "electra":
        raise ValueError("model.init_from continues masked-language-model pretraining; "
                         "pretrain.objective electra starts from scratch")
    tokenizer = load_tokenizer(tokenizer_dir)
    if main_process:
        prepare_data(config, tokenizer, specials, out)
    barrier()
    data = prepare_data(config, tokenizer, specials, out)
    if model is None:
        model_config = encoder_config(config, tokenizer.get_vocab_size(), tokenizer.token_to_id(specials["pad"]))
    else:
        model_config = model.config  # the checkpoint's architecture (and its dropout, kept for export)
    train_config = model_config
    if config.pretrain.dropout is not None:  # pretraining-only dropout; the export keeps model_config's
        train_config = dataclasses.replace(model_config, dropout=config.pretrain.dropout)
        if model is not None:
            set_dropout(model, config.pretrain.dropout)
            model.config = train_config
    corpus_sources = read_json(config.directory / "corpus" / "stats.json").get("sources", {})
    weights = {name: source.get("weight", 1.0) for name, source in corpus_sources.items()}
    trainer = Trainer(train_config, config.pretrain, data, tokenizer, out / "checkpoints", seed=config.seed,
                      model=model, mask_token=specials["mask"], source_weights=weights)
    trainer.resume_if_possible()
    started = time.time()
    trainer.train()
    final_model = trainer.unsharded_model()  # a collective under FSDP: every rank takes part
    if not main_process:
        return trainer.summary()
    atomic_write_json(out / "history.json", trainer.history())
    difference = export_model(final_model, tokenizer_dir, out / "export", config=model_config)
    if difference > 1e-4:
        raise RuntimeError(f"exported model disagrees with the training model: max |Δ| = {difference:.2e}")
    summary = trainer.summary()
    summary.update(export_max_abs_logit_diff=difference, train_seconds=round(time.time() - started, 2),
                   parameters=sum(p.numel() for p in final_model.parameters()), init=init_info)
    atomic_write_json(out / "summary.json", summary)
    print(f"pretrain: {summary['steps']} steps, final loss {summary['final_loss']:.3f}, "
          f"{summary['real_tokens_per_s']:.0f} real tokens/s, export max |Δ| {difference:.1e}")
    return summary


def load_summary(pretrain_dir: Path) -> dict[str, Any]:
    return read_json(pretrain_dir / "summary.json")
