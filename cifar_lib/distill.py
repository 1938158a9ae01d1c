"""Knowledge distillation: learning from a trained network's predictions as well
as from the labels (Hinton, Vinyals and Dean, "Distilling the Knowledge in a
Neural Network", 2015).

A label says only which class an image is. A trained network (the *teacher*)
says more: that this cat looks a little like a dog and not at all like a truck.
The student is trained on both:

    loss = (1 - w) * cross_entropy(student, label)
           + w * T**2 * KL(softmax(teacher / T) || softmax(student / T))

At a temperature T above 1 both distributions are flatter, so the small
probabilities that carry the teacher's sense of which classes resemble which
count for more; the factor T**2 keeps the gradients of that term at the scale of
the cross-entropy's when T changes. The teacher sees exactly the augmented batch
the student sees, in evaluation mode and without gradients.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class DistillationLoss(nn.Module):
    """The loss above, averaged over the batch. ``weight`` is w (1: the
    teacher's predictions alone), ``temperature`` T, ``label_smoothing`` that of
    the cross-entropy with the labels. Computed in float32 whatever the logits'
    precision (mixed precision hands in bfloat16 ones)."""

    def __init__(
        self, weight: float, temperature: float, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], not {weight}")
        if not temperature > 0:
            raise ValueError(f"temperature must be above 0, not {temperature}")
        self.weight, self.temperature = weight, temperature
        self.cross_entropy = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, logits: Tensor, labels: Tensor, teacher_logits: Tensor) -> Tensor:
        logits, teacher_logits = logits.float(), teacher_logits.float()
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(logits / t, dim=1),
            F.log_softmax(teacher_logits / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        hard = self.cross_entropy(logits, labels)
        return (1 - self.weight) * hard + self.weight * t * t * soft


def freeze(teacher: nn.Module) -> nn.Module:
    """``teacher`` in evaluation mode (BatchNorm's running statistics, no
    dropout) with no parameter asking for gradients."""
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher
