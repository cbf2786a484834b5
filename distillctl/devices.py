"""The one place a recipe's ``device`` field becomes a torch device.

``auto`` (the default of ``embed.device`` and ``distill.device``) is CUDA when torch sees a CUDA device,
else the CPU: a SLURM job that asks for ``gpus > 0`` therefore runs on its GPU with no further setting,
and the same recipe runs on a laptop. An explicit device (``cpu``, ``cuda``, ``cuda:1``, ``mps``) is
used as written; one this machine does not have is a one-line :class:`UserError` (exit 2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distillctl.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

AUTO = "auto"


def resolve_device(name: str = AUTO, *, field: str = "device") -> "torch.device":
    """The torch device of a recipe's ``device`` value; ``field`` names it in errors (``embed.device``)."""
    import torch

    name = (name or AUTO).strip()
    if name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{field}: {name!r} is not a torch device ({exc}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{field}: {name!r} but torch sees no CUDA device; use auto or cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"{field}: {name!r} but torch sees {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UserError(f"{field}: {name!r} but MPS is not available; use auto or cpu")
    elif device.type != "cpu":
        raise UserError(f"{field}: {name!r}: distillctl runs on auto, cpu, cuda[:N] or mps")
    return device


def describe_device(name: str = AUTO) -> dict:
    """What ``name`` resolves to on this machine, for run manifests; never raises.

    ``{"requested", "resolved", "name"}``: ``resolved`` is None (with ``error``) when the device is not here
    (e.g. ``submit`` on a login node for a ``cuda`` recipe: the job's own manifest records its device).
    """
    out: dict = {"requested": name, "resolved": None, "name": None}
    try:
        device = resolve_device(name)
    except UserError as exc:
        out["error"] = str(exc)
        return out
    out["resolved"] = str(device)
    if device.type == "cuda":
        import torch

        out["name"] = torch.cuda.get_device_name(device)
    else:
        out["name"] = device.type
    return out


_TRIM: list = []  # [libc.malloc_trim] once looked up, [None] where there is none


def release_freed_memory() -> None:
    """Hand the C heap's freed pages back to the system (glibc's ``malloc_trim(0)``; nothing elsewhere).

    Several fine-tuned students trained in turn (``full-earlystop``'s lockstep) free a step's activations of
    varying sizes (batches are cut at their longest text) between each other's optimiser states; glibc keeps
    those pages, and the process grew step after step (AG News, 5 MiniLM students: 2.2 GB after 6 rounds and
    still growing, against a flat 1.46 GB with a trim after each step, at the same speed: BENCHMARKS.md)."""
    if not _TRIM:
        try:
            import ctypes

            _TRIM.append(ctypes.CDLL("libc.so.6").malloc_trim)
        except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
            _TRIM.append(None)
    if _TRIM[0] is not None:
        _TRIM[0](0)
