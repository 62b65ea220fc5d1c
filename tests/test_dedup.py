import numpy as np

from domainlm.corpus.dedup import (
    ContaminationIndex,
    band_keys,
    lsh_bands,
    minhash,
    near_duplicates,
    ngram_hashes,
    word_hashes,
)


def test_ngram_hashes_equal_the_sequential_definition():
    words = np.random.default_rng(0).integers(0, 2**63, 300, dtype=np.uint64)
    mix = np.uint64(0x100000001B3)
    for n in (1, 5, 13):
        count = len(words) - n + 1
        expected = words[:count].copy()
        for j in range(1, n):
            expected = expected * mix + words[j : j + count]
        assert np.array_equal(ngram_hashes(words, n), expected)
    assert len(ngram_hashes(words[:4], 5)) == 0


def _jaccard(a: str, b: str, n: int = 5) -> float:
    def grams(t):
        w = t.lower().split()
        return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}
    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y)


def test_minhash_agreement_estimates_jaccard():
    rng = np.random.default_rng(1)
    base = [f"w{rng.integers(10_000)}" for _ in range(400)]
    for rate in (0.01, 0.05, 0.2):
        edited = [f"x{i}" if rng.random() < rate else w for i, w in enumerate(base)]
        a, b = " ".join(base), " ".join(edited)
        estimate = (minhash(word_hashes(a), 5, 256) == minhash(word_hashes(b), 5, 256)).mean()
        assert abs(estimate - _jaccard(a, b)) < 0.08, rate


def test_near_duplicate_clusters_keep_their_first_member():
    rng = np.random.default_rng(2)
    base = [f"w{rng.integers(10_000)}" for _ in range(300)]

    def edit(words, positions):
        return " ".join("changed" if i in positions else w for i, w in enumerate(words))

    texts = [" ".join(f"u{rng.integers(10_000)}" for _ in range(300)),  # unrelated
             edit(base, {10}), " ".join(base), edit(base, {200, 250}), edit(base, {5})]
    signatures = np.stack([minhash(word_hashes(t), 5, 128) for t in texts])
    keys = band_keys(signatures, *lsh_bands(0.8, 128))
    assert near_duplicates(keys.T, lambda members: signatures[members], 0.8) == {2: 1, 3: 1, 4: 1}


def test_contamination_index_finds_a_quoted_13_gram():
    task = "the quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat today"
    index = ContaminationIndex({"ner": ["unrelated short text"], "qa": [task]}, n=13)
    quote = "intro words " + " ".join(task.split()[2:15]) + " outro"
    assert index.match(word_hashes(quote)) == "qa"
    assert index.match(word_hashes("intro " + " ".join(task.split()[2:14]))) is None  # 12 words only


def test_a_text_is_looked_for_in_every_unicode_form_a_corpus_may_hold_it_counted_once():
    """The corpus is NFKC-normalised by default ("µg" becomes "μg", "ﬁ" becomes "fi"); a test text
    quoted from the same source must still match, also in an NFC corpus that kept "µg" (issue 20)."""
    from domainlm.corpus.dedup import corpus_forms
    from domainlm.corpus.normalize import normalize_text

    text = "patients received 5 \u00b5g of the ﬁbrosis inhibitor twice daily for twelve weeks in the trial"
    index = ContaminationIndex({"qa": [text]}, n=13)
    assert index.coverage == {"texts": 1, "ngram": 13, "whole": 0, "too_short": 0, "min_words": 8}
    assert len(corpus_forms(text)) == 2 and len(corpus_forms("plain ascii text")) == 1
    for form in ("NFKC", "NFC", "none"):
        assert index.match(word_hashes(normalize_text("Intro. " + text + " Outro.", form))) == "qa", form
    assert index.match(word_hashes("patients received 5 mg of the fibrosis inhibitor twice daily for twelve weeks")) \
        is None


def test_spacing_around_punctuation_never_changes_the_words_matched():
    tokenised = "Androgen antagonistic effect of estramustine phosphate ( EMP ) metabolites on wild - type and " \
                "mutated androgen receptor ."
    running = "We report: androgen antagonistic effect of estramustine phosphate (EMP) metabolites on wild-type " \
              "and mutated androgen receptor."
    assert np.array_equal(word_hashes(tokenised), word_hashes(running.removeprefix("We report: ")))
    assert ContaminationIndex({"ner": [tokenised]}, n=13).match(word_hashes(running)) == "ner"
