"""The state of one Boost-DD stage's outer loop, and its checkpoint file (one generic save / load).

A checkpoint is one safetensors file ``ipc{N}-step{S}.safetensors`` written atomically:

    learn.<name>     the learnable tensors (Learnables: x, label_logits, log_lr)
    best.<name>      the best set on `val` so far
    opt.<pid>.<key>  the outer optimiser's tensors (its other state is JSON metadata)
    method.<key>     the method's tensors (Method.state_dict(); its other values are JSON metadata)
    rng.generator    the stage's torch.Generator state

and the metadata key ``distillctl_checkpoint`` holds the JSON of the :class:`LoopState` scalars, the
optimiser's param groups and the method's non-tensor state. Everything a resumed stage needs to end
with the same set as an uninterrupted one is in this file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillctl.errors import RunError
from distillctl.methods import Learnables
from distillctl.runs import atomic_save_tensors

if TYPE_CHECKING:  # pragma: no cover
    import torch

META_KEY = "distillctl_checkpoint"


@dataclass
class LoopState:
    """Where a stage's outer loop is: its step, the clipping EMA, the best set on `val` so far."""

    step: int = 0  # outer steps done
    ema: float | None = None  # EMA of the (clipped) meta-gradient norms; None before the first step
    elapsed: float = 0.0  # seconds of this stage so far (across resumes)
    best_acc: float = -1.0  # best validation accuracy so far
    best_step: int = 0  # the outer step of the best set
    last_val_step: int = -1  # the outer step of the last validation
    val_seconds: float = 0.0  # seconds of `elapsed` spent validating
    stale_validations: int = 0  # validations in a row since the best set was found (`distill.outer.patience`)
    best: Learnables | None = field(default=None, repr=False)  # the best set (detached)

    def scalars(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "best"}


@dataclass
class Checkpoint:
    """What :func:`load` returns: the loop state, the tensors to restore, and the method's state."""

    loop: LoopState
    learn: Learnables
    optimizer: dict  # a torch.optim state_dict
    generator: "torch.Tensor"
    method: dict[str, Any]


def checkpoint_name(ipc: int, step: int) -> str:
    return f"ipc{ipc}-step{step:07d}.safetensors"


def newest(folder: Path, ipc: int) -> Path | None:
    found = sorted(folder.glob(f"ipc{ipc}-step*.safetensors")) if folder.exists() else []
    return found[-1] if found else None


def _split(values: dict[str, Any], prefix: str, tensors: dict) -> dict:
    """Put the tensors of ``values`` under ``prefix.<key>`` in ``tensors``; return the rest (JSON)."""
    import torch

    rest = {}
    for key, value in values.items():
        if torch.is_tensor(value):
            tensors[f"{prefix}.{key}"] = value.detach()
        else:
            rest[key] = value
    return rest


def save(folder: Path, *, ipc: int, stage: int, loop: LoopState, learn: Learnables, optimizer,
         generator, method_state: dict, fingerprint: str, keep: int) -> Path:
    """Write one checkpoint atomically; keep the newest ``keep`` of this stage. Returns its path."""

    tensors: dict[str, Any] = {f"learn.{k}": v.detach() for k, v in learn.items()}
    tensors.update({f"best.{k}": v for k, v in loop.best.items()})
    sd = optimizer.state_dict()
    opt_meta: dict[str, Any] = {"param_groups": sd["param_groups"],
                                "state": {str(pid): _split(st, f"opt.{pid}", tensors) for pid, st in sd["state"].items()}}
    method_meta = _split(method_state, "method", tensors)
    tensors["rng.generator"] = generator.get_state()
    meta = {"stage": stage, "ipc": ipc, **loop.scalars(), "recipe_fingerprint": fingerprint,
            "optimizer": opt_meta, "method": method_meta}
    path = folder / checkpoint_name(ipc, loop.step)
    atomic_save_tensors(path, tensors, metadata={META_KEY: json.dumps(meta)})
    for stale in sorted(folder.glob(f"ipc{ipc}-step*.safetensors"))[:-keep]:
        stale.unlink(missing_ok=True)
    return path


def load(path: Path, device) -> Checkpoint:
    """Read a checkpoint written by :func:`save`; a damaged file is a :class:`RunError` naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads(fh.metadata()[META_KEY])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # a damaged file: say which one
        raise RunError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc}); delete it to resume "
                       f"from the one before") from None

    def group(prefix: str) -> dict:
        return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

    opt_state = {int(pid): dict(vals) for pid, vals in meta["optimizer"]["state"].items()}
    for key, val in group("opt").items():
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = val.to(device) if name != "step" else val
    loop = LoopState(**{f.name: meta.get(f.name, f.default) for f in fields(LoopState) if f.name != "best"},
                     best=Learnables.from_dict({k: v.to(device) for k, v in group("best").items()}))
    return Checkpoint(
        loop=loop,
        learn=Learnables.from_dict(group("learn")),
        optimizer={"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]},
        generator=tensors["rng.generator"],
        method={**meta.get("method", {}), **{k: v.to(device) for k, v in group("method").items()}},
    )


def restore(ckpt: Checkpoint, learn: Learnables, optimizer, generator) -> LoopState:
    """Copy a checkpoint's learnables, optimiser and generator state into the live objects."""
    import torch

    with torch.no_grad():
        for k, p in learn.items():
            p.copy_(getattr(ckpt.learn, k))
    optimizer.load_state_dict(ckpt.optimizer)
    generator.set_state(ckpt.generator)
    return ckpt.loop


