"""Pretrain stage: masked language modelling of an encoder (the BERT or the ModernBERT layout,
`architectures.ARCHITECTURES`), from scratch or continued from a checkpoint.

Artifacts in `runs/<name>/pretrain/`:
- `data/`: the corpus tokenised and packed once (memory-mapped .npy arrays).
- `checkpoints/step-NNNNNNNN/`: weights (safetensors), optimizer, scheduler, RNG and data position;
  the latest `keep_checkpoints` are kept and a killed run resumes from the newest.
- `history.json`: per-step loss and learning rate, and throughput.
- `export/`: a Hugging Face directory (`BertForMaskedLM` or `ModernBertForMaskedLM` + tokenizer)
  for the evaluate stage.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from domainlm.config import RunConfig, picked, resolve_path
from domainlm.distributed import barrier, rank
from domainlm.errors import ConfigError
from domainlm.executors import task_runner
from domainlm.io import atomic_directory, atomic_write_json, atomic_write_text, input_signature
from domainlm.layout import RunLayout
from domainlm.pretrain.architectures import (
    ARCHITECTURES,
    LayoutConfig,
    architecture_of,
    load_checkpoint,
)
from domainlm.pretrain.attention import segment_attention_mask
from domainlm.pretrain.checkpoint import Checkpointer, checkpoint_step
from domainlm.pretrain.data import (
    TokenShards,
    merge_token_parts,
    token_ids,
    tokenize_corpus_shard,
    write_token_part,
    write_token_shards,
)
from domainlm.pretrain.difficulty import DifficultySettings, document_difficulty
from domainlm.pretrain.encoder import Encoder, MaskedLM, non_embedding_parameters
from domainlm.pretrain.flops import pretraining_flops
from domainlm.pretrain.objectives import OBJECTIVES, masked_lm_logits
from domainlm.pretrain.plan import DataPlan, PlanSettings
from domainlm.pretrain.sparsity import density
from domainlm.pretrain.trainer import Trainer
from domainlm.progress import Curves
from domainlm.tasks.load import load_task, prompt_text
from domainlm.vocabulary import (
    read_tokenizer,
    special_tokens,
    with_corpus_normalization,
    write_loader_settings,
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
log = logging.getLogger(__name__)


def encoder_config(config: RunConfig, vocab_size: int, pad_id: int) -> LayoutConfig:
    """The config of a model trained from scratch, in the layout `model.architecture` names."""
    return ARCHITECTURES[config.model.architecture].config(
        vocab_size=vocab_size, max_position=config.model.max_position, dropout=config.model.dropout,
        pad_token_id=pad_id, **config.model.resolved(),
    )


def prepare_data(config: RunConfig, tokenizer_dir: Path, specials: dict[str, str],
                 prompts: Callable[[], Iterator[tuple[str, str]]] | None = None) -> TokenShards:
    """Tokenise the corpus (and `prompts()`' (text, source) documents after it) once into token
    shards, and reuse them. Each corpus shard is a task on `resources.corpus_executor`'s workers
    (a local pool, or Ray) writing a part; a killed run redoes only unwritten parts; the parts are
    then merged (the same bytes as tokenising in one pass) and removed."""
    run_dir = RunLayout(config.directory)
    folder = run_dir.token_shards
    if not TokenShards.written(folder):
        tokenizer = read_tokenizer(tokenizer_dir)
        special, dtype = token_ids(tokenizer, specials)
        shards = run_dir.corpus_files.shards()
        parts = [run_dir.token_part(shard.stem) for shard in shards]
        jobs = [(str(tokenizer_dir), str(shard), str(part), dtype)
                for shard, part in zip(shards, parts, strict=True) if not part.exists()]
        with task_runner(config.resources.corpus_executor, config.resources.corpus_workers) as run:
            run(tokenize_corpus_shard, jobs, "tokenize corpus shards", done=len(shards) - len(jobs))
        if prompts:
            parts.append(run_dir.token_part("prompts"))
            write_token_part(tokenizer, prompts(), parts[-1], dtype)
        merge_token_parts(parts, folder, special, dtype)
        shutil.rmtree(parts[0].parent, ignore_errors=True)
    return TokenShards.load(folder)


def prepare(config: RunConfig, out: Path | None = None) -> tuple[MaskedLM | None, Path, dict[str, str], dict[str, Any]]:
    """What pretraining needs before its first step, done in this process: the starting model
    (`initial_model`, its tokenizer folder written), the token shards, the curriculum's difficulty
    scores. `domainlm pretrain --data-only` runs it alone, so the ranks torchrun starts later wait
    for none of it. Returns `initial_model`'s result."""
    start = initial_model(config, write=True)
    _, tokenizer_dir, specials, _ = start
    shards = prepare_data(config, tokenizer_dir, specials, lambda: prompt_documents(config, specials["mask"]))
    if config.pretrain.curriculum != "none":  # scored and cached once, before any rank's data plan reads it
        document_difficulty(shards, picked(DifficultySettings, config.pretrain),
                            read_tokenizer(tokenizer_dir).get_vocab_size())
    plan = DataPlan(shards, picked(PlanSettings, config.pretrain), config.seed,
                    RunLayout(config.directory).corpus_source_weights())
    for stream in plan.streams():  # packed once and saved beside the shards; every rank maps the files
        plan.packing(stream)
    return start


def prompt_documents(config: RunConfig, mask_token: str) -> Iterator[tuple[str, str]]:
    """Prompt-based continued pretraining: each `pretrain.prompt_tasks` task's training examples in
    its prompt template, the mask token where the label word goes, as source `prompt:<task>`."""
    for task_config in config.tasks:
        if task_config.name in config.pretrain.prompt_tasks:
            task = load_task(task_config, seed=config.seed)
            for example in task.train:
                yield prompt_text(task.template, example, mask_token), f"prompt:{task.name}"


def initial_model(config: RunConfig, write: bool = True) -> tuple[MaskedLM | None, Path, dict[str, str], dict[str, Any]]:
    """With `model.init_from`: the checkpoint as our encoder (vocabulary extended if asked) and the
    tokenizer folder it uses; with `model.grow_from`: the grown model (`grown_model`). Otherwise
    (None, the domain tokenizer, its special tokens, {}). The special tokens are the pad / unk /
    cls / sep / mask tokens the tokenizer folder names."""
    run_dir = RunLayout(config.directory)
    if config.model.grow_from:
        return grown_model(config, write)
    if not config.model.init_from:
        return None, run_dir.tokenizer, special_tokens(run_dir.tokenizer), {}
    from domainlm.pretrain.vocab_extension import extend_vocabulary, save_tokenizer_dir

    source = resolve_path(config.model.init_from)
    model, info = load_checkpoint(source)  # what `check` refuses was refused before any stage ran
    specials = special_tokens(source)
    tokenizer_dir = run_dir.pretrain_tokenizer
    if config.model.extend_vocab:
        model, tokenizer, added = extend_vocabulary(model, read_tokenizer(source), read_tokenizer(run_dir.tokenizer),
                                                    run_dir.corpus_texts(), config.model.extend_vocab)
        info["added_tokens"] = len(added)
        info["added_examples"] = added[:30]
        if write:
            with atomic_directory(tokenizer_dir) as tmp:
                save_tokenizer_dir(tokenizer, tmp, like=source, unicode_form=config.corpus.normalization)
    elif write:
        with atomic_directory(tokenizer_dir) as tmp:
            copy_tokenizer_files(source, tmp, unicode_form=config.corpus.normalization)
    return model, tokenizer_dir, specials, info


def grown_model(config: RunConfig, write: bool = True) -> tuple[MaskedLM, Path, dict[str, str], dict[str, Any]]:
    """`model.grow_from` grown into the sizes of the `model` section (`growth.grow`), its tokenizer
    copied (when `write`) to the stage's tokenizer folder (what cannot grow, `check` refused). The
    info is the checkpoint's, with "growth": the method and the source and target sizes."""
    from domainlm.pretrain.growth import grow, grown_config, growth_info

    source = resolve_path(config.model.grow_from)
    small, info = load_checkpoint(source)
    target = grown_config(small.config, growth_sizes(config, info["architecture"]))
    model = grow(small, target, config.model.grow_depth, config.model.grow_init)
    info["growth"] = growth_info(small.config, target, config.model.grow_depth, config.model.grow_init)
    tokenizer_dir = RunLayout(config.directory).pretrain_tokenizer
    if write:
        with atomic_directory(tokenizer_dir) as tmp:
            copy_tokenizer_files(source, tmp, unicode_form=config.corpus.normalization)
    return model, tokenizer_dir, special_tokens(source), info


def growth_sizes(config: RunConfig, architecture: str) -> dict[str, Any]:
    """The sizes a grown model takes from the `model` section, read with the source's layout's
    presets (with the default architecture a ModernBERT source reads its own)."""
    return config.model.model_copy(update={"architecture": architecture}).resolved()


def check(config: RunConfig) -> None:
    """Refuse, before any stage runs, what the recipe and the checkpoints it names already rule
    out (from each one's config.json and tokenizer, no weights): a layout other than
    `model.architecture` names, growth from an ELECTRA checkpoint or into sizes it cannot take,
    vocabulary extension of a tokenizer that is not WordPiece, rows longer than the positions of
    the checkpoint, the grown model or the teacher, a teacher or difficulty model of another
    vocabulary than a checkpoint's the model continues, an attention kernel this machine lacks.
    A checkpoint that an earlier experiment arm is still to write is checked at that arm's turn."""
    from domainlm.pretrain.architectures import checkpoint_config
    from domainlm.pretrain.engine import resolve_attention
    from domainlm.pretrain.growth import grown_config

    model, pretrain, layout = config.model, config.pretrain, None
    key = "init_from" if model.init_from else "grow_from" if model.grow_from else None
    source = resolve_path(getattr(model, key)) if key else None
    if source is not None and source.exists():
        layout, info = checkpoint_config(source)
        check_layout(config, info, key)
        if key == "grow_from":
            if info["model_type"] == "electra":
                raise ConfigError(f"model.grow_from {model.grow_from} is an ELECTRA checkpoint: growth starts from "
                                  "a BERT, RoBERTa or ModernBERT masked language model")
            layout = grown_config(layout, growth_sizes(config, info["architecture"]))
        if model.extend_vocab:
            check_extensible(source, config)
        check_positions(layout, config)
    vocabulary = source if source is not None and source.exists() and not model.extend_vocab else None
    for role, path in (("teacher", pretrain.teacher), ("difficulty_model", pretrain.difficulty_model)):
        if path and resolve_path(path).exists():
            check_scorer(config, role, resolve_path(path), vocabulary)
    if layout is None and source is None:
        layout = encoder_config(config, vocab_size=8, pad_id=0)  # a layout's shape; its vocabulary is not known yet
    if layout is not None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dropout = layout.dropout if pretrain.dropout is None else pretrain.dropout
        resolve_attention(pretrain.attention, device, dropout, pretrain.static_shapes,
                          windowed=layout.attention_window is not None)


def check_scorer(config: RunConfig, role: str, path: Path, vocabulary: Path | None) -> None:
    """A teacher or difficulty model (`pretrain.<role>`, at `path`): a masked LM with a tokenizer,
    positions for a packed row (teacher), and, when the model's vocabulary is already known (the
    tokenizer folder `vocabulary` of the checkpoint it continues), the same vocabulary."""
    from domainlm.pretrain.architectures import checkpoint_config

    layout, _ = checkpoint_config(path)
    if role == "teacher":
        check_positions(layout, config, f"teacher {config.pretrain.teacher}")
    if not (path / "tokenizer.json").exists():
        raise ConfigError(f"pretrain.{role} {path} has no tokenizer.json: its vocabulary (and [MASK] id) is needed")
    if vocabulary is not None:
        check_same_vocabulary(f"pretrain.{role} {path}", path, read_tokenizer(vocabulary).get_vocab())


def check_same_vocabulary(what: str, path: Path, ours: dict[str, int]) -> None:
    """ConfigError naming `what` when the tokenizer at `path` has another vocabulary than `ours`
    (distillation and difficulty scoring compare distributions over the same entries)."""
    theirs = read_tokenizer(path).get_vocab()
    if ours != theirs:
        differ = len(set(ours.items()) ^ set(theirs.items())) // 2
        raise ConfigError(f"{what} has another vocabulary than the model's ({len(theirs)} vs {len(ours)} entries, "
                          f"about {differ} differ): use one trained with this run's tokenizer (or init_from checkpoint)")


def check_layout(config: RunConfig, info: dict[str, Any], key: str) -> None:
    """ConfigError when `model.architecture` names a layout other than the checkpoint's
    (`model.<key>`); the default, bert, takes either."""
    if config.model.architecture != "bert" and info["architecture"] != config.model.architecture:
        raise ConfigError(f"model.architecture is '{config.model.architecture}', but model.{key} "
                          f"{getattr(config.model, key)} is a '{info['model_type']}' checkpoint: use it with "
                          "model.architecture: bert (the default), or start from a "
                          f"{config.model.architecture} checkpoint")


def copy_tokenizer_files(source: Path, folder: Path, unicode_form: str | None = None) -> None:
    """Copy the tokenizer files a transformers model directory has into `folder`, and make every
    transformers loader read them with tokenizer.json's ids, the ids pretraining used
    (`vocabulary.write_loader_settings`). `unicode_form` (the corpus's `corpus.normalization`, for a
    checkpoint's own tokenizer): the copy first normalises text that way, as the corpus was."""
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copyfile(source / name, folder / name)  # not the mode: a read-only source stays writable here
    if not (folder / "tokenizer.json").exists():
        return
    if unicode_form:
        tokenizer = with_corpus_normalization(read_tokenizer(folder), unicode_form)
        atomic_write_text(folder / "tokenizer.json", tokenizer.to_str(pretty=True))
    write_loader_settings(folder)


def check_extensible(source: Path, config: RunConfig) -> None:
    """ConfigError, before any weights load, when the checkpoint's tokenizer is not WordPiece:
    vocabulary extension spells each new entry in the checkpoint's WordPiece pieces (a byte-level
    BPE vocabulary, as ModernBERT's and RoBERTa's, has no such pieces to average)."""
    kind = json.loads(read_tokenizer(source).to_str())["model"]["type"]
    if kind != "WordPiece":
        raise ConfigError(f"model.extend_vocab {config.model.extend_vocab}: vocabulary extension adds WordPiece "
                          f"entries, but the checkpoint {config.model.init_from} has a {kind} tokenizer: set "
                          "model.extend_vocab: 0, or start from a WordPiece checkpoint (BERT, MiniLM, ELECTRA)")


def export_model(model: Encoder, tokenizer_dir: Path, out: Path, config: LayoutConfig | None = None,
                 objective: str = "mlm") -> float:
    """Write the `transformers` directory the objective exports (BertForMaskedLM /
    RobertaForMaskedLM / ModernBertForMaskedLM, or ELECTRA's discriminator as
    ElectraForPreTraining; `objectives.OBJECTIVES`) and check that stock transformers, loading it
    from disk, gives our outputs. Returns the max abs difference. `config` (default: the model's)
    is what the exported config.json says, e.g. fine-tuning dropout."""
    import transformers

    row = OBJECTIVES[objective]
    hf = row.export(model, config)
    with atomic_directory(out) as tmp:
        hf.save_pretrained(str(tmp), safe_serialization=True)
        copy_tokenizer_files(tokenizer_dir, tmp)
    return output_difference(model, getattr(transformers, row.loader).from_pretrained(str(out)), outputs=row.outputs)


@torch.no_grad()
def output_difference(model: Encoder, hf_model, batch_size: int = 2, length: int | None = None,
                      outputs=masked_lm_logits) -> float:
    """Max |ours - hf| of the output logits (`outputs(model, ids, positions, attn)`: MLM logits, or
    an objective's, such as ELECTRA's replaced-token logits) on a random right-padded batch (fp32,
    eval mode, real tokens). `length` (default 24, or for a model with local attention twice its
    window, so that the window is tested, within the longest row)."""
    model, hf_model = model.float().eval().cpu(), hf_model.float().eval()
    c = model.config
    if length is None:
        length = min(c.max_position, 2 * max(12, c.attention_window or 12))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, c.vocab_size, (batch_size, length), generator=generator)
    lengths = torch.tensor([length, length // 2])[:batch_size]
    real = torch.arange(length)[None, :] < lengths[:, None]
    ids = torch.where(real, ids, torch.full_like(ids, c.pad_token_id))
    segments = torch.where(real, 0, -1 - torch.arange(length).expand_as(ids))
    positions, attn = torch.arange(length).expand_as(ids), segment_attention_mask(segments)
    theirs = hf_model(input_ids=ids, attention_mask=real.long()).logits
    return float((outputs(model, ids, positions, attn) - theirs)[real].abs().max())


def set_dropout(model: torch.nn.Module, p: float) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        if hasattr(module, "attn_dropout"):
            module.attn_dropout = p


def needs(config: RunConfig) -> tuple[str, ...]:
    return ("corpus", "tokenizer")


def inputs(config: RunConfig) -> list[str]:
    """The checkpoint continued pretraining starts from (or the one grown), the masking lexicon, the
    distillation teacher, the curriculum's difficulty scorer, the files of prompt-pretraining tasks."""
    prompt_files = [path for t in config.tasks if t.name in config.pretrain.prompt_tasks for path in t.files()]
    return [p for p in (config.model.init_from, config.model.grow_from, config.pretrain.lexicon,
                        config.pretrain.teacher, config.pretrain.difficulty_model) if p] + prompt_files


def settings(config: RunConfig) -> dict[str, Any]:
    found = {"model": config.model.fingerprinted(), "pretrain": config.pretrain.fingerprinted(), "seed": config.seed}
    if config.pretrain.prompt_tasks:  # how their texts are read and wrapped (absent otherwise: old runs keep theirs)
        found["prompt_tasks"] = [t.fingerprinted() for t in config.tasks if t.name in config.pretrain.prompt_tasks]
    return found


def output_digest(config: RunConfig) -> str:
    """What later stages read of this stage's output: the exported model directory."""
    return input_signature(RunLayout(config.directory).export)


HELDOUT_DOCS = 4000  # held-out documents the final MLM loss is measured on (the first, in file order)


def heldout_shards(run_dir: RunLayout, tokenizer_dir: Path, specials: dict[str, str], folder: Path) -> TokenShards | None:
    """The corpus's first `HELDOUT_DOCS` held-out documents as token shards in `folder` (what the
    held-out MLM loss is measured on); None when the corpus holds none."""
    docs = list(itertools.islice(((d["text"], d.get("source", "corpus")) for d in run_dir.corpus_documents("heldout")),
                                 HELDOUT_DOCS))
    if not docs:
        return None
    return write_token_shards(read_tokenizer(tokenizer_dir), docs, folder / "heldout", specials=specials)


def heldout_loss(trainer: Trainer, run_dir: RunLayout, tokenizer_dir: Path, specials: dict[str, str]) -> dict | None:
    """The trained model's MLM loss on the corpus's held-out documents (`Trainer.heldout_loss`:
    fixed packing and masking, so runs of one recipe compare, and a forecast can be checked);
    None when the corpus holds none."""
    with tempfile.TemporaryDirectory() as folder:
        shards = heldout_shards(run_dir, tokenizer_dir, specials, Path(folder))
        return trainer.heldout_loss(shards) if shards is not None else None


def resume_point(config: RunConfig) -> str:
    """Where a rerun of the stage goes on from: its newest checkpoint's step and folder, or the start."""
    newest = Checkpointer(RunLayout(config.directory).checkpoints, keep=1, parts=[]).newest()
    return f"step {checkpoint_step(newest)} ({newest})" if newest is not None else "step 0 (no checkpoint yet)"


def discarded_work(config: RunConfig) -> str | None:
    """What rerunning the stage from scratch throws away: the steps its newest checkpoint holds."""
    newest = Checkpointer(RunLayout(config.directory).checkpoints, keep=1, parts=[]).newest()
    if newest is None:
        return None
    return f"Training restarts from step 0: the {checkpoint_step(newest)} steps its newest checkpoint holds are discarded"


def check_positions(checkpoint: LayoutConfig, config: RunConfig, name: str | None = None) -> None:
    """ConfigError when a packed row is longer than the checkpoint's usable positions (its table
    minus RoBERTa's offset, or ModernBERT's max_position_embeddings), naming both and the fix,
    instead of an IndexError (or rotary positions it never saw) at step 0. `name`: how the message
    names the checkpoint (default: the one the model starts from)."""
    usable, why = checkpoint.usable_positions()
    name = name or f"checkpoint {config.model.init_from or config.model.grow_from}"
    if config.pretrain.seq_len > usable:
        raise ConfigError(f"pretrain.seq_len {config.pretrain.seq_len} exceeds the {usable} positions the "
                          f"{name} can use ({why}): set pretrain.seq_len <= {usable}")


def load_teacher(config: RunConfig, tokenizer: Tokenizer) -> MaskedLM | None:
    """The frozen teacher `pretrain.teacher` names (None without one). ConfigError when its
    vocabulary is not the model's (distillation compares distributions over the same entries):
    the one check `check` cannot make before the domain tokenizer exists."""
    if not config.pretrain.teacher:
        return None
    source = resolve_path(config.pretrain.teacher)
    check_same_vocabulary(f"pretrain.teacher {config.pretrain.teacher}", source, tokenizer.get_vocab())
    teacher, _ = load_checkpoint(source)
    return teacher


def check_window(model_config: LayoutConfig, config: RunConfig) -> None:
    """A local window that covers whole rows is legal but makes local layers global: say so."""
    window = model_config.attention_window
    if window is not None and window // 2 >= config.pretrain.seq_len - 1:
        log.warning("pretrain: model.local_window %d covers every pair of tokens in a %d-token row: the local "
                    "layers attend as the global ones do", window, config.pretrain.seq_len)


def training_configs(config: RunConfig, model: MaskedLM | None, tokenizer: Tokenizer,
                     specials: dict[str, str]) -> tuple[LayoutConfig, LayoutConfig]:
    """(the exported model's config, the config it trains with): they differ only in dropout, when
    `pretrain.dropout` is set (a continued checkpoint's dropout layers are set to it too)."""
    if model is None:
        model_config = encoder_config(config, tokenizer.get_vocab_size(), tokenizer.token_to_id(specials["pad"]))
    else:
        model_config = model.config  # the checkpoint's architecture (and its dropout, kept for export)
    train_config = model_config
    if config.pretrain.dropout is not None:
        train_config = dataclasses.replace(model_config, dropout=config.pretrain.dropout)
        if model is not None:
            set_dropout(model, config.pretrain.dropout)
            model.config = train_config
    return model_config, train_config


def run(config: RunConfig, out: Path) -> dict[str, Any]:
    """Train (resuming from the newest checkpoint), export, and check the export against the model."""
    if config.resources.pretrain_threads:
        torch.set_num_threads(config.resources.pretrain_threads)
    run_dir, main_process = RunLayout(config.directory), rank() == 0  # under torchrun, rank 0 writes
    if main_process:
        model, tokenizer_dir, specials, init_info = prepare(config)
    barrier()
    if not main_process:
        model, tokenizer_dir, specials, init_info = initial_model(config, write=False)
    tokenizer = read_tokenizer(tokenizer_dir)
    data = prepare_data(config, tokenizer_dir, specials)
    model_config, train_config = training_configs(config, model, tokenizer, specials)
    check_window(model_config, config)
    teacher = load_teacher(config, tokenizer)
    curves = Curves(run_dir.pretrain_curves, enabled=main_process)
    trainer = Trainer(train_config, config.pretrain, data, tokenizer, run_dir.checkpoints, seed=config.seed,
                      model=model, mask_token=specials["mask"], source_weights=run_dir.corpus_source_weights(),
                      curves=curves, teacher=teacher)
    trainer.resume_if_possible()
    started = time.time()
    trainer.train()
    curves.close()
    heldout = heldout_loss(trainer, run_dir, tokenizer_dir, specials)  # every rank: a collective under FSDP
    final_model = trainer.unsharded_model()  # a collective under FSDP: every rank takes part
    if not main_process:
        return trainer.summary()
    atomic_write_json(run_dir.pretrain_history, trainer.record.history(config.pretrain.log_every))
    difference = export_model(final_model, tokenizer_dir, run_dir.export, config=model_config,
                              objective=trainer.objective_name)
    if difference > 1e-4:
        raise RuntimeError(f"exported model disagrees with the training model: max |Δ| = {difference:.2e}")
    summary = trainer.summary() | (heldout or {})
    pretrain = config.pretrain
    summary |= pretraining_flops(final_model, pretrain.seq_len, summary["positions"], summary["masked_tokens"],
                                 pretrain.sparsity, teacher, teacher_logits=bool(pretrain.distill_logits))
    if pretrain.sparsity:
        summary["sparsity"] = {"target": pretrain.sparsity, "final_density": density(final_model)}
    summary.update(export_max_abs_logit_diff=difference, train_seconds=round(time.time() - started, 2),
                   architecture=architecture_of(model_config),
                   parameters=sum(p.numel() for p in final_model.parameters()), init=init_info,
                   vocab_size=model_config.vocab_size, non_embedding_parameters=non_embedding_parameters(final_model))
    atomic_write_json(run_dir.pretrain_summary, summary)
    log.info("pretrain: %d steps, final loss %.3f, %.0f real tokens/s, export max |Δ| %.1e", summary["steps"],
             summary["final_loss"], summary["real_tokens_per_s"], difference)
    return summary
