"""``bptt``: the outer loss after training fresh students on the set, differentiated through that training.

The unroll strategy (a plugin of its own kind) chooses how many inner steps run without a graph and
how many are differentiated; :func:`distillctl.unrolling.unroll` does the work.
"""

from __future__ import annotations

from distillctl.methods import Learnables, Method, MethodContext, OuterStep
from distillctl.plugins import get_registry
from distillctl.toolbox import InnerProblem


class BPTT(Method):
    name = "bptt"

    def __init__(self, options):
        self.options = options
        self.strategy = get_registry().build("unroll", options.unroll)

    def setup(self, context: MethodContext) -> None:
        super().setup(context)
        self.problem = InnerProblem.from_context(context)

    def step(self, learn: Learnables, real_x, real_y, generator) -> OuterStep:
        ms = self.strategy.meta_gradient(self.problem, learn.as_dict(), real_x, real_y, generator)
        return OuterStep(loss=ms.loss, grads=ms.grads, accuracy=ms.accuracy,
                         metrics={"free_steps": ms.free_steps, "graph_steps": ms.graph_steps})
