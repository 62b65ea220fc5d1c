from tokenizers import Tokenizer, models, pre_tokenizers

from conftest import synthetic_texts
from domainlm.config import TokenizerConfig
from domainlm.tokenizer import save_for_transformers, train_wordpiece, vocabulary_fit


def test_fit_by_hand():
    vocab = {"[UNK]": 0, "gene": 1, "kin": 2, "##ase": 3, "the": 4}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fit = vocabulary_fit(tokenizer, ["the kinase gene", "the gene"])
    # 5 words -> the(1) kin ##ase(2) gene(1) the(1) gene(1) = 6 pieces; 1 of 5 words split
    assert fit["words"] == 5
    assert fit["fertility"] == 6 / 5
    assert fit["split_share"] == 1 / 5
    assert fit["most_split"] == ["kinase"]


def test_fit_counts_every_word_even_past_a_saved_truncation():
    tokenizer = train_wordpiece(synthetic_texts(200), TokenizerConfig(vocab_size=150, min_frequency=1))
    tokenizer.enable_truncation(max_length=4)
    fit = vocabulary_fit(tokenizer, ["protein kinase binds receptor " * 10])
    assert fit["words"] == 40 and fit["fertility"] >= 1.0


def test_trained_tokenizer_loads_in_transformers(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = train_wordpiece(synthetic_texts(200), TokenizerConfig(vocab_size=150, min_frequency=1))
    save_for_transformers(tokenizer, tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    encoded = loaded("Protein kinase binds")
    assert encoded["input_ids"][0] == loaded.cls_token_id and encoded["input_ids"][-1] == loaded.sep_token_id
    assert loaded.mask_token == "[MASK]" and loaded.pad_token_id == 0
    assert loaded.decode(encoded["input_ids"], skip_special_tokens=True) == "protein kinase binds"
