"""``dm``: distribution matching (Zhao & Bilen) in the feature space of freshly initialised students.

Per outer step: K new random students (no training at all); for every class c present in the real batch,

    loss += | mean_i features(x_syn[c, i]) - mean_j features(x_real[c, j]) |^2

averaged over the K students. Labels and the inner learning rate play no part, so a recipe that learns
them is refused with one line.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from distillctl.methods import Learnables, Method, MethodContext, OuterStep, gradients, refuse, require_features
from distillctl.seeds import draw_seed
from distillctl.toolbox import InnerProblem


def class_means(phi: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, B, h) features and (B,) classes -> (K, C, h) per-class means and (C,) row counts."""
    onehot = F.one_hot(y, num_classes).to(phi.dtype)  # (B, C)
    counts = onehot.sum(0)  # (C,)
    sums = torch.einsum("kbh,bc->kch", phi, onehot)  # (K, C, h)
    return sums / counts.clamp_min(1)[None, :, None], counts


class DM(Method):
    name = "dm"

    def __init__(self, options):
        self.options = options

    def setup(self, context: MethodContext) -> None:
        super().setup(context)
        refuse(self.name, context, soft_labels=True, learn_lr=True)
        self.problem = InnerProblem.from_context(context, population=self.options.students)
        require_features(self.problem.template()[0], self.name, context.student_name)

    def step(self, learn: Learnables, real_x, real_y, generator) -> OuterStep:
        C, ipc = self.context.num_classes, self.context.ipc
        seed = draw_seed(generator)
        theta = self.problem.init_population(seed)  # (K, P) fresh students, never trained
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout inside the students draws from here
            phi_s = self.problem.population_features(theta, learn.x)  # (K, n, h), n = C*ipc class-major
            with torch.no_grad():
                phi_r = self.problem.population_features(theta, real_x, vectorized=False)  # (K, B, h)
        mean_s = phi_s.view(phi_s.shape[0], C, ipc, -1).mean(2)  # (K, C, h)
        mean_r, counts = class_means(phi_r, real_y, C)  # (K, C, h), (C,)
        present = (counts > 0).to(mean_s.dtype)  # a class missing from the batch adds nothing
        loss = ((mean_s - mean_r).pow(2).sum(-1) * present).sum(-1).mean()
        return OuterStep(loss=float(loss.detach()), grads=gradients(loss, learn))
