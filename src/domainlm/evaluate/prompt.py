"""Prompt-based fine-tuning: a task put to the masked LM as a cloze question.

PET (Schick & Schütze 2021, "Exploiting cloze questions for few-shot text classification and
natural language inference") and LM-BFF (Gao et al. 2021, "Making pre-trained language models
better few-shot learners"): each input is wrapped in a template holding the model's mask token
("{text} It was {mask}."), each label stands for one or more words of the vocabulary (its
verbalizer: positive -> great), and a label's logit is the mean of its words' logits from the
masked-LM head at the mask. The loss is the cross-entropy over the labels, trained end to end with
the fine-tuning loop of `evaluate.finetune` (same optimizer, grid, seeds, early stopping): the model
returns one logit per label, so the `class` row of `evaluate.heads.HEADS` batches, decodes and
scores it as it does a classification head's.

Label words the recipe does not give are found before training (`search_words`): the label's name
when it is one token; else the vocabulary word with the highest mean log-probability at the mask
over the label's training examples, less its mean over all training examples — the first step of
LM-BFF's automatic label-word search (the top words by the class's conditional likelihood, §5.1),
ranked against the whole training set as PETAL's likelihood ratio does (Schick, Schmid & Schütze
2020) so that a word the template favours for every input is not chosen for every label; one word
per label, no re-ranking by dev accuracy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from domainlm.config import EvaluateConfig, masked_lm_problem
from domainlm.errors import ModelError
from domainlm.evaluate.finetune import Tuning, batches, check_positions, collate
from domainlm.evaluate.heads import Encoded, special_frame
from domainlm.tasks.load import Task

_PLACEHOLDER = re.compile(r"\{(text|text_pair|mask)\}")


# ------------------------------------------------------------------------------------ template
@dataclass(frozen=True)
class Segment:
    """One piece of a template: literal words, an example's text (`text`, `text_pair`) or `mask`."""
    kind: str
    words: str = ""
    space: bool = False
    """Whether a space comes before it (byte-level BPE vocabularies spell a word after a space
    with its own tokens, 'Ġgreat'); the literal's own outer spaces are taken off."""


def template_segments(template: str) -> list[Segment]:
    """`template` as segments in order, e.g. "{text} It was {mask}." -> text, "It was" (after a
    space), mask (after a space), "."."""
    segments, space, at = [], False, 0
    for match in [*_PLACEHOLDER.finditer(template), None]:
        literal = template[at : match.start() if match else len(template)]
        if literal.strip():
            segments.append(Segment("literal", literal.strip(), space or literal[0].isspace()))
            space = literal[-1].isspace()
        else:
            space = space or bool(literal)
        if match:
            segments.append(Segment(match.group(1), space=space and bool(segments)))
            space, at = False, match.end()
    return segments


def _pieces(tokenizer, text: str, space: bool) -> list[int]:
    return tokenizer((" " if space else "") + text, add_special_tokens=False)["input_ids"]


def _cut(lengths: list[int], budget: int) -> list[int]:
    """Lengths cut to sum to at most `budget`, the longest first (as `truncation="longest_first"`)."""
    lengths = [min(n, budget) for n in lengths]
    while sum(lengths) > budget:
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        lengths[longest] -= 1
    return lengths


def _without_mask(ids: list[int], mask_id: int, unknown: int | None) -> list[int]:
    """A text's tokens with any mask token read as unknown (dropped when there is no unknown token):
    the template's mask must be the only one."""
    return [unknown if t == mask_id else t for t in ids if t != mask_id or unknown is not None]


def encode_prompts(tokenizer, task: Task, examples: list[dict], max_length: int) -> Encoded:
    """Each example in the task's template, one sequence with the model's special tokens around it
    and exactly one mask token; the example's texts (never the template) are cut, longest first, to
    fit `max_length`. A mask token inside an example's text is read as the unknown token."""
    segments = template_segments(task.template)
    before, after = special_frame(tokenizer)
    mask_id, unknown = tokenizer.mask_token_id, tokenizer.unk_token_id
    if mask_id is None:
        raise ModelError(f"tokenizer {type(tokenizer).__name__} has no mask token: prompt-based fine-tuning needs one")
    fixed = {i: _pieces(tokenizer, s.words, s.space) for i, s in enumerate(segments) if s.kind == "literal"}
    texts = {i: tokenizer([(" " if s.space else "") + x[s.kind] for x in examples], add_special_tokens=False)["input_ids"]
             for i, s in enumerate(segments) if s.kind in ("text", "text_pair")}
    budget = max_length - len(before) - len(after) - 1 - sum(map(len, fixed.values()))
    if budget < len(texts):
        raise ModelError(f"task '{task.name}': the template {task.template!r} leaves no room for the text in "
                         f"{max_length} tokens")
    index = {name: i for i, name in enumerate(task.labels)}
    items, truncated = [], 0
    for e, x in enumerate(examples):
        full = [len(texts[i][e]) for i in texts]
        kept = dict(zip(texts, _cut(full, budget), strict=True))
        truncated += kept != dict(zip(texts, full, strict=True))
        ids = list(before)
        for i, segment in enumerate(segments):
            if segment.kind == "mask":
                ids.append(mask_id)
            elif segment.kind == "literal":
                ids += fixed[i]
            else:
                ids += _without_mask(texts[i][e][: kept[i]], mask_id, unknown)
        items.append({"input_ids": ids + after, "token_type_ids": None, "label": index.get(x["label"], -100),
                      "example": e})
    return Encoded(items, truncated)


# ------------------------------------------------------------------------------- label words
def word_token(tokenizer, word: str, space: bool) -> int | None:
    """The one vocabulary token that spells `word` where the mask stands (after a space or not),
    or None when the tokenizer splits it or reads it as unknown."""
    ids = _pieces(tokenizer, word, space)
    return ids[0] if len(ids) == 1 and ids[0] != tokenizer.unk_token_id else None


def given_words(tokenizer, task: Task, space: bool, model: str) -> dict[str, list[int]]:
    """The recipe's label words as tokens; ModelError naming a word this tokenizer splits."""
    out = {}
    for label, words in task.verbalizer.items():
        out[label] = []
        for word in words:
            token = word_token(tokenizer, word, space)
            if token is None:
                pieces = tokenizer.convert_ids_to_tokens(_pieces(tokenizer, word, space))
                raise ModelError(f"{model}: tasks.{task.name}.prompt.verbalizer: {label}: {word!r} is not one token of "
                                 f"this model's vocabulary ({' '.join(pieces)}); give a word that is")
            out[label].append(token)
    return out


@torch.no_grad()
def mean_log_probabilities(model, data: Encoded, task: Task, batch_size: int, pad_id: int, mask_id: int,
                           device) -> dict[int, torch.Tensor]:
    """Per class index, the mean over its training examples of the masked LM's log-probabilities
    at the mask, (vocabulary,); key -1: the mean over all of them."""
    model.eval()
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    for indices in batches([len(it["input_ids"]) for it in data.items], batch_size):
        items = [data.items[i] for i in indices]
        batch = {k: v.to(device) for k, v in collate(items, task, pad_id).items() if k != "labels"}
        logits = model(**batch).logits  # (B, L, V)
        at_mask = logits[batch["input_ids"] == mask_id].float().log_softmax(-1).cpu()  # (B, V): one mask per row
        for item, row in zip(items, at_mask, strict=True):
            for key in (item["label"], -1):
                sums[key] = sums.get(key, 0) + row
                counts[key] = counts.get(key, 0) + 1
    return {key: total / counts[key] for key, total in sums.items()}


UNTRAINED = "no training example: the likeliest free word at the mask"
"""The verbalizer source of a label that no training example carries."""


def search_words(tokenizer, scores: dict[int, torch.Tensor], task: Task, labels: list[str], space: bool,
                 taken: set[int]) -> dict[str, list[int]]:
    """For each of `labels` (in task order), the vocabulary word with the highest mean
    log-probability over its training examples less the mean over all of them (`scores`), among
    whole words (letters only, one token where the mask stands) no other label has. A label
    without training examples (a class of the task that a subsample left out) takes the word with
    the highest mean over all of them (`UNTRAINED`): nothing can train it, and a word that fits the
    slot keeps the label as likely as the other words there."""
    special = set(tokenizer.all_special_ids) | taken
    out = {}
    for label in labels:
        c = task.labels.index(label)
        ranking = scores[c] - scores[-1] if c in scores else scores[-1]
        for token in torch.argsort(ranking, descending=True).tolist():
            word = tokenizer.decode([token]).strip()
            if token not in special and word.isalpha() and word_token(tokenizer, word, space) == token:
                out[label] = [token]
                special.add(token)
                break
        else:
            raise ModelError(f"task '{task.name}': no word of the vocabulary is left for label {label!r}; give it one "
                             f"in tasks.{task.name}.prompt.verbalizer")
    return out


def label_words(model, tokenizer, task: Task, train: Encoded, batch_size: int, device,
                name: str) -> tuple[dict[str, list[int]], dict[str, str]]:
    """(label -> its word tokens, label -> where they came from: recipe, label name or search), in
    the order of `task.labels`; see the module docstring for the search."""
    space = next(s for s in template_segments(task.template) if s.kind == "mask").space
    words = given_words(tokenizer, task, space, name)
    source = dict.fromkeys(words, "recipe")
    taken = {t for tokens in words.values() for t in tokens}
    for label in task.labels:
        if label not in words:
            token = word_token(tokenizer, label, space) or word_token(tokenizer, label.lower(), space)
            if token is not None and token not in taken and token not in tokenizer.all_special_ids:
                words[label], source[label] = [token], "label name"
                taken.add(token)
    if missing := [label for label in task.labels if label not in words]:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        scores = mean_log_probabilities(model, train, task, batch_size, pad_id, tokenizer.mask_token_id, device)
        found = search_words(tokenizer, scores, task, missing, space, taken)
        words |= found
        source |= {label: "search" if task.labels.index(label) in scores else UNTRAINED for label in found}
    return {label: words[label] for label in task.labels}, source


# ------------------------------------------------------------------------------------- model
class PromptModel(torch.nn.Module):
    """A masked LM that answers with one logit per label: the mean of its label words' logits at
    the mask token (exactly one per row)."""

    def __init__(self, masked_lm, words: dict[str, list[int]], mask_id: int):
        super().__init__()
        self.masked_lm = masked_lm
        self.mask_id = mask_id
        vocabulary = masked_lm.get_output_embeddings().out_features
        average = torch.zeros(len(words), vocabulary)  # (labels, V): 1 / n on a label's n words
        for c, tokens in enumerate(words.values()):
            average[c, tokens] = 1 / len(tokens)
        self.register_buffer("average", average, persistent=False)

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None) -> SequenceClassifierOutput:
        inputs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        logits = self.masked_lm(input_ids=input_ids, attention_mask=attention_mask, **inputs).logits  # (B, L, V)
        at_mask = logits[input_ids == self.mask_id]  # (B, V)
        scores = at_mask.float() @ self.average.T  # (B, labels)
        loss = torch.nn.functional.cross_entropy(scores, labels, ignore_index=-100) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=scores)


def masked_lm_config(path: Path):
    """The directory's transformers config, or ModelError naming the directory when it is missing,
    corrupt, of an architecture without a masked-LM head, or exported without one (an ELECTRA
    discriminator)."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    from domainlm.io import read_json

    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path}: not a model directory (no config.json)")
    try:
        problem = masked_lm_problem(read_json(config_file))
        config = AutoConfig.from_pretrained(str(path))
    except (ValueError, KeyError, OSError) as err:
        raise ModelError(f"{path}: config.json cannot be read as a transformers config ({err})") from None
    if problem:
        raise ModelError(f"{path}: {problem}")
    if type(config) not in AutoModelForMaskedLM._model_mapping:
        raise ModelError(f"{path}: architecture '{config.model_type}' has no masked-LM head in transformers")
    return config


def check_masked_lm(path: Path, task: Task, max_length: int) -> None:
    """`masked_lm_config`, and its position table against `max_length` (`finetune.check_positions`)."""
    check_positions(masked_lm_config(path), path, max_length, task)


def load_masked_lm(path: Path, pretrained: bool, vocab_size: int):
    """The directory's masked LM; ModelError when the checkpoint lacks weights of its masked-LM
    head (transformers would start them at random). `pretrained=False`: every weight afresh."""
    from transformers import AutoModelForMaskedLM

    config = masked_lm_config(path)
    try:
        if pretrained:
            model, info = AutoModelForMaskedLM.from_pretrained(str(path), config=config, use_safetensors=True,
                                                               output_loading_info=True)
        else:
            model, info = AutoModelForMaskedLM.from_config(config), {"missing_keys": []}
    except Exception as err:  # noqa: BLE001 - whatever breaks loading, the message names the directory
        raise ModelError(f"{path}: weights cannot be loaded ({type(err).__name__}: {str(err)[:300]})") from None
    if info["missing_keys"]:
        raise ModelError(f"{path}: the checkpoint has no weights for {', '.join(sorted(info['missing_keys'])[:3])}: "
                         "prompt-based fine-tuning needs a masked-LM export with its head")
    if vocab_size > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(vocab_size)  # relation markers added to the tokenizer
    return model


def prompt_tuning(config: EvaluateConfig) -> Tuning:
    """`finetune`'s `Tuning` for prompt-based fine-tuning; the model's result adds `finetuning`,
    `template`, `verbalizer` (label -> words) and `verbalizer_source` (label -> recipe, label name
    or search)."""

    def load(path, task, pretrained, tokenizer, train, device):
        masked_lm = load_masked_lm(path, pretrained, len(tokenizer)).to(device)
        words, source = label_words(masked_lm, tokenizer, task, train, config.batch_size, device, str(path))
        model = PromptModel(masked_lm, words, tokenizer.mask_token_id).to(device)
        model.record = {"finetuning": "prompt", "template": task.template, "verbalizer_source": source,
                        "verbalizer": {label: [tokenizer.decode([t]).strip() for t in tokens]
                                       for label, tokens in words.items()}}
        return model

    return Tuning(check=check_masked_lm, encode=encode_prompts, load=load, details=lambda model: model.record)
