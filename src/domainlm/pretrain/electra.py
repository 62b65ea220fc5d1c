"""ELECTRA replaced-token detection (Clark et al., 2020).

A small generator (an MLM encoder `generator_fraction` as wide as the model, as deep) fills the
masked positions with tokens sampled from its predictions; the discriminator (the model we keep)
learns, at every real position, whether its token was replaced. The two share the embeddings
(the generator projects them to its width), and train together on
`generator MLM loss + rtd_weight * replaced-token-detection loss`. Only the discriminator is
exported, as a stock `transformers` `ElectraForPreTraining`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from domainlm.pretrain.attention import Attention
from domainlm.pretrain.bert import Bert, BertConfig, to_hf_state_dict
from domainlm.pretrain.encoder import GROUPS, Encoder, MaskedTargets


def generator_config(c: BertConfig, fraction: float) -> BertConfig:
    """Same depth and head size, `fraction` of the heads and of the MLP width."""
    heads = max(1, round(c.num_heads * fraction))
    return dataclasses.replace(c, hidden_size=heads * (c.hidden_size // c.num_heads), num_heads=heads,
                               intermediate_size=max(1, round(c.intermediate_size * fraction)),
                               embedding_size=c.embedding_size or c.hidden_size)


class Electra(Encoder):
    """The discriminator (the model kept), the generator, and the discriminator's head."""

    def __init__(self, c: BertConfig, generator_fraction: float = 0.25):
        super().__init__()
        self.config = c
        self.discriminator = Bert(c, mlm_head=False)
        self.generator = Bert(generator_config(c, generator_fraction))
        for name in ("tok_embed", "pos_embed", "type_embed", "embed_norm"):  # shared embeddings
            setattr(self.generator, name, getattr(self.discriminator, name))
        # ELECTRA's discriminator head: dense + GELU, then one logit per token.
        self.rtd_dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.rtd_out = nn.Linear(c.hidden_size, 1)
        for layer in (self.rtd_dense, self.rtd_out):
            nn.init.normal_(layer.weight, std=c.initializer_range)
            nn.init.zeros_(layer.bias)

    def layers(self) -> list[nn.Module]:
        return self.discriminator.layers() + self.generator.layers()

    def parameter_groups(self) -> dict[str, list[str]]:
        own = dict(self.named_parameters())  # the shared embeddings once, under the discriminator
        groups = {group: [] for group in GROUPS}
        for prefix in ("discriminator", "generator"):
            for group, names in getattr(self, prefix).parameter_groups().items():
                groups[group] += [f"{prefix}.{name}" for name in names if f"{prefix}.{name}" in own]
        groups["head"] += [name for name in own if name.startswith(("rtd_dense.", "rtd_out."))]
        return groups

    def flops_per_position(self, seq_len: int, density: float = 1.0) -> float:
        head = 2 * (self.rtd_dense.weight.numel() + self.rtd_out.weight.numel())
        return (self.discriminator.flops_per_position(seq_len, density)
                + self.generator.flops_per_position(seq_len, density) + head)

    def flops_per_masked(self) -> float:
        return self.generator.flops_per_masked()

    def rtd_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.rtd_out(F.gelu(self.rtd_dense(hidden))).squeeze(-1)

    def losses(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attn: Attention, real: torch.Tensor,
               targets: MaskedTargets) -> dict[str, torch.Tensor]:
        """Summed losses of one (micro-)batch: `mlm` over the masked positions, `rtd` over the real
        ones. input_ids, position_ids, real: (B, T), the masked input; targets: the masked
        positions with their original ids and one uniform draw each (`masked_targets`), which
        samples the generator's replacement (inverse CDF), so the same draws give the same tokens
        on any device. Every shape follows the inputs' (a fixed-capacity `targets` keeps them
        static; its padding slots change nothing)."""
        hidden = self.generator(input_ids, position_ids, attn)
        logits = self.generator.masked_logits(hidden.reshape(-1, hidden.shape[-1]), targets)
        logits = logits.float()  # (K, V)
        mlm = F.cross_entropy(logits, targets.labels, reduction="sum")
        valid = targets.labels != -100
        with torch.no_grad():  # sampling is not differentiated (ELECTRA trains the generator by MLM only)
            cumulative = logits.softmax(-1).cumsum(-1)
            sampled = torch.searchsorted(cumulative, targets.draws["noise"].unsqueeze(-1)).squeeze(-1)
            sampled = sampled.clamp(max=logits.shape[-1] - 1)
        flat_ids = attn.select(input_ids).reshape(-1)
        # Padding slots add 0: scatter_add keeps them harmless however many share index 0.
        change = torch.where(valid, sampled - flat_ids.index_select(0, targets.index), 0)
        corrupted = flat_ids.scatter_add(0, targets.index, change)
        if attn.kind == "varlen":  # back to (B, T): the discriminator's forward removes padding itself
            corrupted = input_ids.masked_scatter(attn.real, corrupted)
        else:
            corrupted = corrupted.view_as(input_ids)
        replaced = torch.zeros(flat_ids.shape, dtype=torch.float, device=flat_ids.device).scatter_add(
            0, targets.index, (valid & (sampled != targets.labels)).float())  # sampling the original is not a replacement
        scores = self.rtd_logits(self.discriminator(corrupted, position_ids, attn)).reshape(-1)
        flat_real = attn.select(real).reshape(-1).float()
        rtd = (F.binary_cross_entropy_with_logits(scores.float(), replaced, reduction="none") * flat_real).sum()
        return {"mlm": mlm, "rtd": rtd}


def to_hf_electra_state_dict(model: Electra) -> dict[str, torch.Tensor]:
    """The discriminator under `ElectraForPreTraining`'s names."""
    bert = to_hf_state_dict(model.discriminator)
    out = {"electra." + k.removeprefix("bert."): v for k, v in bert.items() if k.startswith("bert.")}
    out["discriminator_predictions.dense.weight"] = model.rtd_dense.weight.detach().cpu().contiguous()
    out["discriminator_predictions.dense.bias"] = model.rtd_dense.bias.detach().cpu().contiguous()
    out["discriminator_predictions.dense_prediction.weight"] = model.rtd_out.weight.detach().cpu().contiguous()
    out["discriminator_predictions.dense_prediction.bias"] = model.rtd_out.bias.detach().cpu().contiguous()
    return out


def to_hf_electra(model: Electra, config: BertConfig | None = None):
    """A stock `transformers.ElectraForPreTraining` holding the discriminator."""
    from transformers import ElectraConfig, ElectraForPreTraining

    c = config or model.config
    hf = ElectraForPreTraining(ElectraConfig(
        vocab_size=c.vocab_size, embedding_size=c.hidden_size, hidden_size=c.hidden_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position, hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.dropout,
        pad_token_id=c.pad_token_id, layer_norm_eps=c.layer_norm_eps, initializer_range=c.initializer_range,
        hidden_act="gelu", type_vocab_size=c.type_vocab_size, architectures=["ElectraForPreTraining"]))
    missing, unexpected = hf.load_state_dict(to_hf_electra_state_dict(model), strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise RuntimeError(f"ELECTRA export mismatch: missing {missing}, unexpected {unexpected}")
    return hf
