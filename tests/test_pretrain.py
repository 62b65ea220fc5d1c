import numpy as np
import pytest
import torch

from conftest import synthetic_texts
from domainlm.config import PretrainConfig, TokenizerConfig
from domainlm.pretrain import export_model
from domainlm.pretrain.attention import segment_attention_mask
from domainlm.pretrain.bert import Bert, BertConfig
from domainlm.pretrain.data import (
    TokenShards,
    cached_pack,
    mask_tokens,
    pack,
    word_start_table,
    write_token_shards,
)
from domainlm.pretrain.trainer import Trainer
from domainlm.tokenizer import save_for_transformers

CLS, SEP, PAD = 2, 3, 0


def _in_memory_shards(docs, sources=None):
    tokens = np.concatenate(docs).astype(np.uint16)
    offsets = np.cumsum([0] + [len(d) for d in docs])
    sources = np.zeros(len(docs), np.int16) if sources is None else np.asarray(sources, np.int16)
    return TokenShards(tokens, offsets, sources, ["a", "b"], {"cls": CLS, "sep": SEP, "pad": PAD})


def test_packing_keeps_documents_apart():
    docs = [np.arange(10, 10 + n) for n in (5, 3, 20, 1)]
    shards = _in_memory_shards(docs)
    packing = shards.pack(seq_len=12)
    batch = shards.batch(packing, np.arange(len(packing)))
    rows, segments, positions = (batch[k].numpy() for k in ("input_ids", "segment_ids", "position_ids"))
    assert rows.shape == (len(packing), 12)
    recovered = []
    for row, seg, pos in zip(rows, segments, positions, strict=True):
        for s in sorted(set(seg[seg >= 0].tolist())):
            piece = row[seg == s]
            assert piece[0] == CLS and piece[-1] == SEP  # every segment is a whole [CLS] ... [SEP]
            assert (pos[seg == s] == np.arange(len(piece))).all()  # positions restart per document
            recovered.append(piece[1:-1])
        assert (row[seg < 0] == PAD).all()
        assert len(set(seg[seg < 0].tolist())) == (seg < 0).sum()  # each pad position is alone
    assert np.array_equal(np.concatenate(recovered), shards.tokens)  # nothing lost, order kept
    assert all(len(r) <= 10 for r in recovered)  # long documents are chunked to seq_len - 2
    assert batch["real"].sum() == packing.real_tokens() == len(shards.tokens) + 2 * len(recovered)


def _greedy_rows(widths: list[int], seq_len: int) -> tuple[list[int], list[int]]:
    """The definition: (first segment of each row, column of each segment), filling a row with
    segments in order until the next one does not fit."""
    starts, cols, fill = [0], [], 0
    for index, width in enumerate(widths):
        if fill + width > seq_len:
            starts.append(index)
            fill = 0
        cols.append(fill)
        fill += width
    return starts, cols


@pytest.mark.parametrize("seq_len", [8, 12, 64, 512])
def test_packing_fills_rows_greedily_in_corpus_order(seq_len):
    lengths = np.random.default_rng(seq_len).integers(0, 3 * seq_len, 2000)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    packing = pack(offsets[:-1], offsets[1:], seq_len)
    starts, cols = _greedy_rows((packing.seg_len + 2).tolist(), seq_len)
    assert packing.row_ptr.tolist() == [*starts, len(packing.seg_len)] and packing.seg_col.tolist() == cols
    assert packing.seg_len.sum() == lengths.sum() and packing.seg_len.max() <= seq_len - 2


def test_a_packing_is_saved_beside_the_shards_and_mapped_after(tokenizer, tmp_path):
    shards = write_token_shards(tokenizer, ((t, "s") for t in synthetic_texts(200)), tmp_path / "shards")
    docs = np.random.default_rng(0).permutation(shards.num_docs)
    first = cached_pack(shards, docs, 32)
    assert isinstance(first.seg_start, np.memmap) and len(list((tmp_path / "shards").glob("packing-32-*"))) == 1
    expected = pack(shards.offsets[docs], shards.offsets[docs + 1], 32)
    for name in ("row_ptr", "seg_start", "seg_len", "seg_col"):
        assert np.array_equal(getattr(first, name), getattr(expected, name))
    cached_pack(shards, docs, 32)
    cached_pack(shards, docs[::-1].copy(), 32)  # another order: packed again, saved apart
    assert len(list((tmp_path / "shards").glob("packing-32-*"))) == 2


def test_token_shards_round_trip(tokenizer, tmp_path):
    texts = synthetic_texts(30)
    shards = write_token_shards(tokenizer, ((t, "even" if i % 2 == 0 else "odd") for i, t in enumerate(texts)),
                                tmp_path / "shards", batch_size=7)
    assert isinstance(shards.tokens, np.memmap) and shards.tokens.dtype == np.uint16
    assert shards.num_docs == 30 and shards.source_names == ["even", "odd"]
    for i in (0, 13, 29):
        expected = tokenizer.encode(texts[i], add_special_tokens=False).ids
        assert shards.tokens[shards.offsets[i] : shards.offsets[i + 1]].tolist() == expected
    assert shards.sources.tolist() == [i % 2 for i in range(30)]


def test_attention_never_crosses_documents():
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)).eval()
    segments = torch.tensor([[0, 0, 0, 1, 1, 1, 1, -5]])
    ids = torch.randint(5, 50, (1, 8))
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0]])
    before = model(ids, positions, segment_attention_mask(segments))
    changed = ids.clone()
    changed[0, 3:] = torch.randint(5, 50, (5,))  # rewrite the second document and the padding
    after = model(changed, positions, segment_attention_mask(segments))
    assert torch.equal(before[0, :3], after[0, :3])
    # ...and the first document, packed, gives exactly what it gives alone.
    alone = model(ids[:, :3], positions[:, :3], segment_attention_mask(segments[:, :3]))
    torch.testing.assert_close(alone[0], before[0, :3])


def test_masked_only_head_equals_full_head():
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=60, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)).eval()
    ids = torch.randint(5, 60, (2, 10))
    positions = torch.arange(10).expand(2, 10)
    mask = segment_attention_mask(torch.zeros(2, 10, dtype=torch.long))
    labels = torch.full((2, 10), -100)
    labels[0, 2], labels[1, 7], labels[1, 0] = 11, 12, 13
    full_logits = model.mlm_logits(model(ids, positions, mask))  # (B, T, V)
    full = torch.nn.functional.cross_entropy(full_logits.view(-1, 60), labels.view(-1), ignore_index=-100)
    torch.testing.assert_close(model.mlm_loss(ids, positions, mask, labels), full)


def test_whole_word_masking_masks_all_pieces(tokenizer):
    word_start = word_start_table(tokenizer)
    texts = synthetic_texts(40, seed=3)
    ids = [tokenizer.encode(t).ids for t in texts]
    width = max(map(len, ids))
    batch = torch.tensor([x + [PAD] * (width - len(x)) for x in ids])
    special = torch.isin(batch, torch.tensor([PAD, CLS, SEP]))
    generator = torch.Generator().manual_seed(0)
    masked, labels = mask_tokens(batch, ~special, word_start, 0.3, 4, 150, generator, mode="whole-word")
    chosen = labels != -100
    assert not chosen[special].any()
    # A continuation piece is chosen exactly when the piece before it is.
    continuation = ~word_start[batch] & ~special
    assert torch.equal(chosen[:, 1:][continuation[:, 1:]], chosen[:, :-1][continuation[:, 1:]])
    rate = chosen.sum() / (~special).sum()
    assert 0.2 < rate < 0.4
    assert ((masked == 4) & chosen).sum() / chosen.sum() > 0.7  # ~80% become [MASK]
    assert torch.equal(labels[chosen], batch[chosen])


def _trainer(tokenizer, data, folder, steps=6, dropout=0.1):
    config = PretrainConfig(max_steps=steps, batch_size=4, seq_len=32, lr=1e-3, checkpoint_every=2, log_every=1)
    model_config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=2,
                                 intermediate_size=64, max_position=32, dropout=dropout)
    return Trainer(model_config, config, data, tokenizer, folder, seed=0)


@pytest.fixture(scope="module")
def data(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards") / "shards"
    return write_token_shards(tokenizer, ((t, "s") for t in synthetic_texts(80)), folder)


def test_resume_gives_the_same_losses(data, tokenizer, tmp_path):
    straight = _trainer(tokenizer, data, tmp_path / "a")
    straight.train()
    interrupted = _trainer(tokenizer, data, tmp_path / "b", steps=6)
    interrupted.config.max_steps = 4  # stop after step 4's checkpoint, as a killed run would leave it
    interrupted.train()
    resumed = _trainer(tokenizer, data, tmp_path / "b")
    assert resumed.resume_if_possible() and resumed.step == 4
    resumed.train()
    assert resumed.losses == straight.losses  # bit-for-bit on CPU, fp32
    assert straight.losses[-1] < straight.losses[0]
    assert len(list((tmp_path / "a").glob("step-*"))) == 2  # keep_checkpoints


def test_export_loads_in_stock_transformers_and_matches(tokenizer, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    save_for_transformers(tokenizer, tmp_path / "tok")
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=2,
                                  intermediate_size=64, max_position=64))
    for p in model.parameters():  # move away from the init so every weight matters
        p.data += 0.05 * torch.randn_like(p)
    difference = export_model(model, tmp_path / "tok", tmp_path / "export")
    assert difference <= 1e-4
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "export").eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "export")
    encoded = hf_tokenizer(["protein kinase binds receptor", "tumor"], padding=True, return_tensors="pt")
    ids, real = encoded["input_ids"], encoded["attention_mask"].bool()
    T = ids.shape[1]
    segments = torch.where(real, 0, -1 - torch.arange(T).expand_as(ids))
    with torch.no_grad():
        ours = model.eval().mlm_logits(model(ids, torch.arange(T).expand_as(ids), segment_attention_mask(segments)))
        theirs = hf(**encoded).logits
    assert (ours - theirs)[real].abs().max() <= 1e-4



@pytest.mark.parametrize("kind", ["linear", "cosine", "one-cycle", "wsd"])
def test_lr_schedules(kind):
    from domainlm.optim import lr_schedule

    factor = lr_schedule(kind, warmup_steps=10, total_steps=100, decay_fraction=0.2)
    values = [factor(s) for s in range(100)]
    assert values[9] == pytest.approx(1.0)  # peak at the end of warmup
    assert all(a < b for a, b in zip(values[:9], values[1:10], strict=True))  # warmup rises
    assert all(a >= b for a, b in zip(values[9:], values[10:], strict=False))  # then never rises
    assert values[-1] <= 0.05
    if kind == "one-cycle":
        assert values[0] > 1 / 25
    if kind == "wsd":
        assert values[50] == 1.0 and values[79] == 1.0 and values[81] < 1.0
    if kind == "linear":
        assert values[55] == pytest.approx(1 - 45 / 90)
    if kind == "cosine":
        assert values[55] == pytest.approx(0.5)


def test_span_masking_masks_runs_of_whole_words(tokenizer):
    word_start = word_start_table(tokenizer)
    ids = [tokenizer.encode(t).ids for t in synthetic_texts(60, seed=5)]
    width = max(map(len, ids))
    batch = torch.tensor([x + [PAD] * (width - len(x)) for x in ids])
    special = torch.isin(batch, torch.tensor([PAD, CLS, SEP]))
    masked, labels = mask_tokens(batch, ~special, word_start, 0.3, 4, 150, torch.Generator().manual_seed(0),
                                 mode="span", span_mean=3.0)
    chosen = labels != -100
    assert not chosen[special].any()
    continuation = ~word_start[batch] & ~special
    assert torch.equal(chosen[:, 1:][continuation[:, 1:]], chosen[:, :-1][continuation[:, 1:]])  # whole words
    word_chosen = chosen & ~continuation  # one flag per word, at its first piece
    rate = word_chosen.sum() / (~special & ~continuation).sum()
    assert 0.15 < rate < 0.4
    # Masked words come in runs: the mean run of consecutive masked words is well above 1.
    flags = word_chosen[~special & ~continuation].tolist()
    runs, current = [], 0
    for flag in flags:
        if flag:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    assert sum(runs) / len(runs) > 1.8


def test_token_masking_ignores_word_boundaries(tokenizer):
    batch = torch.tensor([tokenizer.encode(t).ids for t in synthetic_texts(1, seed=2)] * 200)
    special = torch.isin(batch, torch.tensor([PAD, CLS, SEP]))
    _, labels = mask_tokens(batch, ~special, word_start_table(tokenizer), 0.15, 4, 150,
                            torch.Generator().manual_seed(0), mode="token")
    rate = (labels != -100).sum() / (~special).sum()
    assert 0.12 < rate < 0.18


@pytest.mark.parametrize("masking", ["token", "span"])
def test_trainer_runs_every_masking_mode(data, tokenizer, tmp_path, masking):
    trainer = _trainer(tokenizer, data, tmp_path, steps=2)
    trainer.config.masking = masking
    trainer.train()
    assert len(trainer.losses) == 2 and all(np.isfinite(trainer.losses))


def _poison(trainer, bad_steps: set[int], monkeypatch):
    """Make the loss NaN on the given steps (as an overflow would)."""
    original = trainer.model.mlm_loss
    calls = {"step": trainer.step}

    def loss(*args, **kwargs):
        value = original(*args, **kwargs)
        step, calls["step"] = calls["step"], calls["step"] + 1
        return value * float("nan") if step in bad_steps else value

    monkeypatch.setattr(trainer.model, "mlm_loss", loss)


def test_a_nan_step_is_skipped_and_reported(data, tokenizer, tmp_path, monkeypatch):
    trainer = _trainer(tokenizer, data, tmp_path, steps=4)
    _poison(trainer, {1}, monkeypatch)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert trainer.record.skipped_steps == [1]
    assert np.isnan(trainer.losses[1]) and np.isfinite([trainer.losses[i] for i in (0, 2, 3)]).all()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_repeated_nan_steps_stop_the_run(data, tokenizer, tmp_path, monkeypatch):
    from domainlm.errors import TrainingDiverged

    trainer = _trainer(tokenizer, data, tmp_path, steps=6)
    _poison(trainer, {1, 2, 3, 4, 5}, monkeypatch)
    with pytest.raises(TrainingDiverged, match="3 steps in a row"):
        trainer.train()
    assert trainer.step == 4  # steps 1, 2, 3 were bad
    assert [p.name for p in (tmp_path).glob("step-*")] == ["step-00000002"]  # written with sound weights


def test_gradient_accumulation_matches_the_whole_batch(data, tokenizer, tmp_path):
    runs = []
    for micro in (None, 1):
        # No dropout, so the micro-batches see the same network as the whole batch.
        trainer = _trainer(tokenizer, data, tmp_path / str(micro), steps=3, dropout=0.0)
        trainer.config.micro_batch_size = micro
        trainer.train()
        runs.append((trainer.losses, [p.detach().clone() for p in trainer.model.parameters()]))
    (whole_losses, whole_params), (micro_losses, micro_params) = runs
    np.testing.assert_allclose(whole_losses, micro_losses, rtol=1e-5)
    for a, b in zip(whole_params, micro_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# -------------------------------------------------------------- byte-level BPE and Unigram vocabularies
@pytest.mark.parametrize("model", ["wordpiece", "bpe", "unigram"])
def test_word_starts_agree_with_the_tokenizers_own_words(model):
    from domainlm.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(synthetic_texts(300), TokenizerConfig(model=model, vocab_size=200, min_frequency=1))
    word_start = word_start_table(tokenizer)
    for text in [t.rstrip(".") for t in synthetic_texts(20, seed=5)] + ["xylophone quartz kinase"]:
        encoding = tokenizer.encode(text, add_special_tokens=False)
        words = encoding.word_ids
        expected = [i == 0 or words[i] != words[i - 1] for i in range(len(words))]
        assert word_start[encoding.ids].tolist() == expected, (text, encoding.tokens)


def test_whole_word_masking_needs_a_vocabulary_that_marks_words():
    from tokenizers import Tokenizer, models, pre_tokenizers

    from domainlm.errors import ModelError

    tokenizer = Tokenizer(models.BPE({"<unk>": 0, "a": 1, "b": 2, "ab": 3}, [("a", "b")], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # no Ġ, no ▁, no ##: words cannot be told apart
    with pytest.raises(ModelError, match=r"pretrain.masking.*set pretrain.masking: token"):
        word_start_table(tokenizer)


def test_token_shards_of_a_roberta_style_vocabulary_use_its_special_tokens(tmp_path):
    from domainlm.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(synthetic_texts(100), TokenizerConfig(model="bpe", vocab_size=300, min_frequency=1))
    shards = write_token_shards(tokenizer, ((t, "a") for t in synthetic_texts(5)), tmp_path / "shards")
    assert shards.special == {k: tokenizer.token_to_id(t) for k, t in (("cls", "<s>"), ("sep", "</s>"), ("pad", "<pad>"))}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["bpe", "unigram"])
def test_pretraining_on_a_bpe_or_unigram_vocabulary_exports_a_model_auto_tokenizer_reads(model, tiny_recipe):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from domainlm.config import config_from_dict
    from domainlm.pipeline import run_stage
    from domainlm.vocabulary import read_tokenizer

    tiny_recipe["tokenizer"]["model"] = model
    tiny_recipe["tokenizer"]["vocab_size"] = 300
    config = config_from_dict(tiny_recipe)
    for stage in ("corpus", "tokenizer", "pretrain"):
        run_stage(config, stage)
    export = config.directory / "pretrain" / "export"
    ours, loaded = read_tokenizer(config.directory / "tokenizer"), AutoTokenizer.from_pretrained(export)
    text = "The Protein kinase binds the receptor."
    assert loaded(text)["input_ids"] == ours.encode(text).ids and loaded.mask_token == "<mask>"
    assert AutoModelForMaskedLM.from_pretrained(export).config.pad_token_id == ours.token_to_id("<pad>")


def test_the_heldout_loss_is_one_number_per_model_and_text(tokenizer, tmp_path):
    data = write_token_shards(tokenizer, ((t, "s") for t in synthetic_texts(80)), tmp_path / "shards")
    heldout = write_token_shards(tokenizer, ((t, "s") for t in synthetic_texts(30, seed=9)), tmp_path / "heldout")
    trainer = _trainer(tokenizer, data, tmp_path / "ckpt", steps=4)
    before = trainer.heldout_loss(heldout)
    assert before == trainer.heldout_loss(heldout) and before["heldout_masked_tokens"] > 20
    assert trainer.objective.training  # back in training mode
    trainer.train()
    after = trainer.heldout_loss(heldout)
    assert after["heldout_mlm_loss"] < before["heldout_mlm_loss"]  # 4 steps at lr 1e-3 learn something
    assert after["heldout_masked_tokens"] == before["heldout_masked_tokens"]  # the same positions masked
