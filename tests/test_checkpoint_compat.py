"""A checkpoint written before the pretraining stage was split into parts (commit bd97775) still
resumes: steps 3-4 give the losses the uninterrupted old run recorded.

The fixtures under golden/checkpoints-bd97775/ were written by that commit's code: ELECTRA with SPDF
masks (model, optimizer, scheduler, RNG, masks) and span MLM distilled from a wider teacher (plus
the projection head). Bit for bit on the machine kind that wrote them, else within 1e-5.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from conftest import synthetic_texts
from domainlm.config import PretrainConfig
from domainlm.pretrain.architectures import new_model
from domainlm.pretrain.bert import BertConfig
from domainlm.pretrain.data import write_token_shards
from domainlm.pretrain.trainer import Trainer

GOLDEN = Path(__file__).with_name("golden")
FIXTURES = GOLDEN / "checkpoints-bd97775"
MODEL = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32, "max_position": 32,
         "dropout": 0.1}
RUNS = {"electra-sparse": {"objective": "electra", "sparsity": 0.5},
        "mlm-distill": {"masking": "span", "distill_logits": 1.0, "distill_hidden": 1.0}}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tokenizer = Tokenizer.from_file(str(GOLDEN / "tokenizer.json"))
    docs = ((t, "domain" if i % 4 == 0 else "general") for i, t in enumerate(synthetic_texts(120, seed=1)))
    return tokenizer, write_token_shards(tokenizer, docs, tmp_path_factory.mktemp("shards") / "shards")


@pytest.mark.parametrize("run", sorted(RUNS))
def test_a_checkpoint_from_before_the_split_resumes_with_the_recorded_losses(run, shards, tmp_path):
    tokenizer, data = shards
    recorded = json.loads((FIXTURES / "losses.json").read_text())
    folder = tmp_path / run
    shutil.copytree(FIXTURES / run, folder)
    vocab = tokenizer.get_vocab_size()
    teacher = None
    if run == "mlm-distill":
        torch.manual_seed(7)
        teacher = new_model(BertConfig(vocab_size=vocab, **(MODEL | {"hidden_size": 24})))
    config = PretrainConfig(max_steps=4, batch_size=4, seq_len=32, lr=1e-3, checkpoint_every=2, keep_checkpoints=5,
                            log_every=1, **RUNS[run])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(BertConfig(vocab_size=vocab, **MODEL), config, data, tokenizer, folder, seed=0,
                          teacher=teacher)
        assert trainer.resume_if_possible()
        assert trainer.step == 2
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    expected = [float.fromhex(v) for v in recorded["runs"][run]]
    same_machine = {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()} == \
        {k: recorded[k] for k in ("torch", "cpu")}
    if same_machine:
        assert trainer.losses == expected, [v.hex() for v in trainer.losses]
    else:
        assert trainer.losses == pytest.approx(expected, rel=1e-5)


def test_weights_that_do_not_fit_are_refused_before_anything_loads():
    from domainlm.errors import ModelError
    from domainlm.pretrain.checkpoint import load_weights, unique_tensors
    from domainlm.pretrain.electra import Electra

    torch.manual_seed(0)
    model = Electra(BertConfig(vocab_size=40, **MODEL))
    saved = unique_tensors(model.state_dict())  # the tied embeddings once
    assert "generator.tok_embed.weight" not in saved and "discriminator.tok_embed.weight" in saved
    torch.manual_seed(1)
    other = Electra(BertConfig(vocab_size=40, **MODEL))
    load_weights(other, saved)
    assert torch.equal(other.generator.tok_embed.weight, model.discriminator.tok_embed.weight)
    before = other.rtd_out.weight.clone()
    with pytest.raises(ModelError, match=r"missing \['rtd_out.bias'\], unexpected \['extra'\]"):
        load_weights(other, {k: v for k, v in saved.items() if k != "rtd_out.bias"} | {"extra": torch.zeros(1)})
    assert torch.equal(other.rtd_out.weight, before)
