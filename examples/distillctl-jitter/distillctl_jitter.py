"""A third-party distillctl unroll strategy for the ``bptt`` method: truncated BPTT with a random horizon.

Each outer step draws the number of inner steps T uniformly in ``[min_total, total]`` (from the
generator it is given, so ``--resume`` stays exact), runs ``T - window`` of them without a graph and
differentiates the last ``window``. An unroll strategy subclasses ``UnrollStrategy`` and overrides
``plan()``; the base class's ``meta_gradient()`` runs the inner loop.
"""

from pydantic import Field, model_validator

from distillctl import hookimpl
from distillctl.options import PluginOptions


class JitterOptions(PluginOptions):
    window: int = Field(10, ge=1, description="Inner steps differentiated per outer step.")
    total: int = Field(40, ge=1, description="Longest horizon (inner steps).")
    min_total: int = Field(20, ge=1, description="Shortest horizon (inner steps); at least `window`.")

    @model_validator(mode="after")
    def _fits(self):
        if not self.window <= self.min_total <= self.total:
            raise ValueError(f"need window <= min_total <= total, got {self.window}, {self.min_total}, {self.total}")
        return self


def build_jitter(options: JitterOptions):
    import torch  # heavy imports inside the factory: `distillctl --help` stays instant

    from distillctl.unrolling import UnrollStrategy

    class JitterUnroll(UnrollStrategy):
        def plan(self, generator: torch.Generator) -> tuple[int, int]:
            horizon = int(torch.randint(options.min_total, options.total + 1, (1,), generator=generator))
            return horizon - options.window, options.window  # (free_steps, graph_steps)

    return JitterUnroll()


@hookimpl
def register_unroll_strategies(register):
    register("jitter", build_jitter, options=JitterOptions,
             description="truncated BPTT whose horizon is drawn in [min_total, total] every outer step")
