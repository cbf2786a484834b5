"""A third-party distillctl method: random-feature mean matching (``rfmm``).

Each outer step draws a random feature map phi(x) = cos(x W + b) (random Fourier features of a
Gaussian kernel; W and b from the step's generator, so ``--resume`` stays exact) and matches, class by
class, the mean feature of the synthetic rows to the mean feature of the real rows of the batch:

    loss = sum over classes c present in the batch of | mean phi(x_syn[c]) - mean phi(x_real[c]) |^2

That is a maximum mean discrepancy between the synthetic and the real class distributions. No student
is trained, so it is fast; labels and the inner learning rate play no part (a recipe that learns them
gets zero gradients for them, and a UserError when it asks for soft labels).
"""

import math

from pydantic import Field

from distillctl import UserError, hookimpl
from distillctl.methods import Method, OuterStep, gradients
from distillctl.options import PluginOptions


class RFMMOptions(PluginOptions):
    features: int = Field(256, ge=1, description="Random features per outer step.")
    bandwidth: float = Field(1.0, gt=0, description="Kernel bandwidth (the scale of the real vectors' distances).")


class RFMM(Method):
    def __init__(self, options: RFMMOptions):
        self.options = options

    def setup(self, context) -> None:
        super().setup(context)  # keeps the context as self.context
        if context.soft_labels:
            raise UserError("method 'rfmm' matches feature means per class and does not use labels; "
                            "set distill.soft_labels to false")

    def step(self, learn, real_x, real_y, generator) -> OuterStep:
        import torch

        C, ipc, d = self.context.num_classes, self.context.ipc, learn.x.shape[1]
        m, dtype = self.options.features, learn.x.dtype
        w = torch.randn(d, m, generator=generator, dtype=dtype).to(learn.x.device) / self.options.bandwidth
        b = (torch.rand(m, generator=generator, dtype=dtype) * 2 * math.pi).to(learn.x.device)

        def phi(x):  # (n, d) -> (n, m)
            return torch.cos(x @ w + b) * math.sqrt(2.0 / m)

        mean_syn = phi(learn.x).view(C, ipc, m).mean(1)  # (C, m): rows are class-major
        onehot = torch.nn.functional.one_hot(real_y, C).to(dtype)  # (B, C)
        counts = onehot.sum(0)  # (C,)
        with torch.no_grad():
            mean_real = (onehot.T @ phi(real_x)) / counts.clamp_min(1)[:, None]  # (C, m)
        loss = ((mean_syn - mean_real).pow(2).sum(1) * (counts > 0).to(dtype)).sum()
        return OuterStep(loss=float(loss.detach()), grads=gradients(loss, learn))


@hookimpl
def register_methods(register):
    register("rfmm", RFMM, options=RFMMOptions, description="random-feature mean matching (an MMD per class)")
