"""``bptt``: the outer loss after training fresh students on the set, differentiated through that training.

The unroll strategy (a plugin of its own kind) chooses how many inner steps run without a graph and
how many are differentiated; :func:`distillctl.unrolling.unroll` does the work. At the token level
(``embed.level: tokens``) the same plan drives :func:`distillctl.distillation.tokens.meta_step`: a few
functional fine-tuning steps of the pretrained student from its initial model (or a head of the pool).
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
        #: inner steps a student takes on the set (the unroll's horizon); distill validates token-level sets with it
        self.inner_steps = getattr(self.strategy, "total", None)

    def setup(self, context: MethodContext) -> None:
        super().setup(context)
        if context.level == "tokens":  # fine-tuning a pretrained transformer: a few functional steps
            from distillctl.distillation.tokens import InnerSteps

            self.problem, self.inner = None, InnerSteps.from_settings(context.inner)
        else:
            self.problem = InnerProblem.from_context(context)

    def step(self, learn: Learnables, real_x, real_y, generator) -> OuterStep:
        if self.problem is None:  # token level: the strategy's plan (free, graph steps), then one meta step
            from distillctl.distillation.tokens import meta_step

            free, graph = self.strategy.plan(generator)
            ms = meta_step(self.context.tokens, learn.as_dict(), self.context.hard_labels, self.context.num_classes,
                           self.inner, real_x, real_y, generator, free_steps=free, graph_steps=graph)
        else:
            ms = self.strategy.meta_gradient(self.problem, learn.as_dict(), real_x, real_y, generator)
        return OuterStep(loss=ms.loss, grads=ms.grads, accuracy=ms.accuracy,
                         metrics={"free_steps": ms.free_steps, "graph_steps": ms.graph_steps})
