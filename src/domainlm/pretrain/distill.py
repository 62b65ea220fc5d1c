"""Knowledge distillation while pretraining: a frozen teacher's MLM distribution and last hidden
states as targets beside MLM (`pretrain.teacher`).

One mechanism serves two recipes:
- self-distillation for further pretraining (Lee et al. 2023, "Self-Distillation for Further
  Pre-training of Transformers"): the teacher is a general checkpoint further pretrained on the
  domain text; the student continues the original checkpoint again, with MLM plus a loss to the
  teacher's hidden states;
- distillation into a small domain model (DistilBERT, Sanh et al. 2019; TinyBERT, Jiao et al.
  2020): a student of any preset learns the teacher's distribution on the masked positions
  (Hinton et al. 2015) and its last hidden states through a learned linear projection when the
  widths differ. The projection is trained with the student and left out of the export.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from domainlm.pretrain.attention import Attention
from domainlm.pretrain.encoder import MaskedLM, MaskedTargets


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the softened distributions, summed over the masked positions and
    multiplied by temperature² (Hinton et al. 2015, so gradients keep their scale). student,
    teacher: (K, V) logits; labels: (K,), -100 on a fixed-capacity buffer's padding slots (left
    out). Zero exactly when the two distributions agree."""
    s = F.log_softmax(student.float() / temperature, dim=-1)
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    per_position = F.kl_div(s, t, log_target=True, reduction="none").sum(-1)  # (K,)
    return (per_position * (labels != -100)).sum() * temperature**2


def hidden_distillation(student: torch.Tensor, teacher: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean squared difference per hidden dimension, summed over the real positions: student and
    teacher (..., H) in the same layout, real (...) bool. Zero when the states are equal."""
    return ((student.float() - teacher.float()).pow(2).mean(-1) * real).sum()


class Distiller(nn.Module):
    """The teacher (frozen, in eval mode) and the projection of the student's width onto the
    teacher's (None when they are equal). `losses` computes the student's MLM loss and the
    distillation losses from one student forward."""

    def __init__(self, teacher: MaskedLM, student_width: int, logit_weight: float, hidden_weight: float,
                 temperature: float):
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        width = teacher.config.hidden_size
        self.projection = nn.Linear(student_width, width, bias=False) if width != student_width else None
        if self.projection is not None:
            nn.init.normal_(self.projection.weight, std=student_width**-0.5)
        self.logit_weight, self.hidden_weight, self.temperature = logit_weight, hidden_weight, temperature

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # no dropout in the targets
        return self

    def losses(self, student: MaskedLM, input_ids: torch.Tensor, position_ids: torch.Tensor, attn: Attention,
               real: torch.Tensor, targets: MaskedTargets) -> dict[str, torch.Tensor]:
        """Summed losses of one micro-batch: `mlm` and `kd` over the masked positions, `hidden`
        over the real tokens (each normalised by the trainer over the whole batch)."""
        hidden = student(input_ids, position_ids, attn)
        flat = hidden.reshape(-1, hidden.shape[-1])
        logits = student.masked_logits(flat, targets)
        losses = {"mlm": F.cross_entropy(logits.float(), targets.labels, reduction="sum")}
        with torch.no_grad():
            teacher_flat = self.teacher(input_ids, position_ids, attn).reshape(flat.shape[0], -1)
            if self.logit_weight:
                teacher_logits = self.teacher.masked_logits(teacher_flat, targets)
        if self.logit_weight:
            losses["kd"] = logit_distillation(logits, teacher_logits, targets.labels, self.temperature)
        if self.hidden_weight:
            projected = flat if self.projection is None else self.projection(flat)
            losses["hidden"] = hidden_distillation(projected, teacher_flat, attn.select(real).reshape(-1))
        return losses
