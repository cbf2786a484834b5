"""A third-party distillctl plugin: a linear student (softmax regression on the embedding)."""

from pydantic import Field

from distillctl import hookimpl
from distillctl.options import PluginOptions


class LinearOptions(PluginOptions):
    bias: bool = Field(True, description="Learn a bias per class.")


def build_linear(input_dim: int, num_classes: int, options: LinearOptions):
    import torch.nn as nn  # heavy import inside the factory: `distillctl --help` stays instant

    return nn.Linear(input_dim, num_classes, bias=options.bias)


@hookimpl
def register_students(register):
    register("linear", build_linear, options=LinearOptions, description="softmax regression")
