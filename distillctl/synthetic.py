"""A distilled (synthetic) set: a few vectors per class, their labels, and where they came from.

On disk: ``ipcN.safetensors`` holds the tensors ``x`` (ipc*C, d) float32 and ``labels`` — (ipc*C,) int64
hard classes or (ipc*C, C) float32 class probabilities (soft labels) — and ``ipcN.json`` beside it holds
everything else (format, ipc, classes, label names, inner learning rate, recipe and embedding-cache
fingerprints, Boost-DD stage, outer step, validation score). Rows are class-major: rows
``c*ipc .. c*ipc+ipc-1`` belong to class c (for soft labels: were initialised as class c).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillctl.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

FORMAT = "distillctl.synthetic-set/1"


def sidecar_path(path: str | Path) -> Path:
    """``ipc10.safetensors`` -> ``ipc10.json``."""
    return Path(path).with_suffix(".json")


@dataclass
class SyntheticSet:
    """x: (ipc*C, d) float32; labels: (ipc*C,) int64 or (ipc*C, C) float probabilities."""

    x: "torch.Tensor"
    labels: "torch.Tensor"
    ipc: int
    num_classes: int
    inner_lr: float | None = None  # learned inner learning rate, when `distill.inner.learn_lr` is set
    meta: dict[str, Any] = field(default_factory=dict)  # fingerprints, stage, outer step, val score, ...

    def __post_init__(self) -> None:
        n = self.ipc * self.num_classes
        if self.x.ndim != 2 or self.x.shape[0] != n:
            raise UserError(f"synthetic set: x must be (ipc*C, d) = ({n}, d), got {tuple(self.x.shape)}")
        if self.labels.shape not in ((n,), (n, self.num_classes)):
            raise UserError(f"synthetic set: labels must be ({n},) or ({n}, {self.num_classes}), "
                            f"got {tuple(self.labels.shape)}")

    @property
    def soft(self) -> bool:
        """True when labels are (n, C) probabilities."""
        return self.labels.ndim == 2

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])

    @property
    def label_names(self) -> list[str]:
        return list(self.meta.get("label_names") or [str(c) for c in range(self.num_classes)])

    def hard_labels(self) -> "torch.Tensor":
        """(n,) int64: the labels, or the most probable class of each soft label."""
        return self.labels.argmax(-1) if self.soft else self.labels

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (safetensors) and its ``.json`` sidecar, each atomically."""
        import torch

        from distillctl.runs import atomic_save_tensors, atomic_write_json

        path = Path(path)
        labels = self.labels.to(torch.float32) if self.soft else self.labels.to(torch.int64)
        atomic_save_tensors(path, {"x": self.x.to(torch.float32), "labels": labels},
                            metadata={"format": FORMAT})
        sidecar = {
            "format": FORMAT,
            "ipc": self.ipc,
            "num_classes": self.num_classes,
            "dim": self.dim,
            "soft_labels": self.soft,
            "inner_lr": self.inner_lr,
            **{k: v for k, v in self.meta.items() if k not in ("format", "ipc", "num_classes", "dim",
                                                               "soft_labels", "inner_lr")},
        }
        atomic_write_json(sidecar_path(path), sidecar)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SyntheticSet":
        """Read a set written by :meth:`save`; a missing or inconsistent file is a :class:`UserError`."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        side = sidecar_path(path)
        if not path.is_file():
            raise UserError(f"{path}: synthetic set file not found")
        if not side.is_file():
            raise UserError(f"{path}: its JSON sidecar {side.name} is missing")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{side}: invalid JSON ({exc})") from None
        missing = [k for k in ("x", "labels") if k not in tensors] + [
            k for k in ("ipc", "num_classes") if k not in meta]
        if missing:
            raise UserError(f"{path}: not a distillctl synthetic set (missing {', '.join(missing)})")
        if meta.get("format", FORMAT) != FORMAT:
            raise UserError(f"{side}: unknown format {meta.get('format')!r} (expected {FORMAT})")
        inner_lr = meta.pop("inner_lr", None)
        ipc, num_classes = int(meta.pop("ipc")), int(meta.pop("num_classes"))
        for k in ("format", "dim", "soft_labels"):
            meta.pop(k, None)
        try:
            return cls(x=tensors["x"], labels=tensors["labels"], ipc=ipc, num_classes=num_classes,
                       inner_lr=inner_lr, meta=meta)
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None
