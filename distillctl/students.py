"""The student contract: what a student plugin's factory returns (``register_students``).

A student is a ``torch.nn.Module`` built by ``factory(input_dim, num_classes, options)``; the core never
subclasses or wraps it. :class:`Student` says what the core calls on it; the built-ins (``linear``,
``mlp``, ``transformer``) are in the ``distillctl_plugins.students`` package. Light: torch is only named
in annotations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    import torch


class Student(Protocol):
    """What a student factory returns: a ``torch.nn.Module`` (``factory(input_dim, num_classes, options)``).

    The core trains it with ``torch.func.functional_call`` (populations with ``torch.func.vmap``), so it
    must keep no state outside its parameters and buffers: no batch norm, no in-place buffer updates.
    """

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        """``(batch, input_dim)`` float vectors -> ``(batch, num_classes)`` logits."""

    def features(self, x: "torch.Tensor") -> "torch.Tensor":
        """Optional: the penultimate representation ``(batch, h)``; the student's final layer applied to
        it gives the logits. Methods with ``features: student`` (krr, dm) need it."""
