"""A third-party distillctl plugin: a linear student (softmax regression on the embedding)."""

import functools

from pydantic import Field

from distillctl import hookimpl
from distillctl.options import PluginOptions


class LinearOptions(PluginOptions):
    bias: bool = Field(True, description="Learn a bias per class.")


@functools.lru_cache(maxsize=None)
def linear_class():
    """The student class, defined once (students of a population must share one class) and only when
    first needed: the torch import stays out of `distillctl --help` and `distillctl plugins`."""
    import torch.nn as nn

    class Linear(nn.Linear):
        """(batch, input_dim) -> (batch, num_classes) logits."""

        def features(self, x):  # optional: the penultimate representation (here the input itself), for krr / dm
            return x

    return Linear


def build_linear(input_dim: int, num_classes: int, options: LinearOptions):
    return linear_class()(input_dim, num_classes, bias=options.bias)


@hookimpl
def register_students(register):
    register("softmax", build_linear, options=LinearOptions, description="softmax regression")
