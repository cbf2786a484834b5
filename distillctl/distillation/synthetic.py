"""A distilled (synthetic) set: a few vectors per class, their labels, and where they came from.

On disk: ``ipcN.safetensors`` holds the tensors ``x`` (ipc*C, d) float32 and ``labels`` — (ipc*C,) int64
hard classes or (ipc*C, C) float32 class probabilities (soft labels) — and ``ipcN.json`` beside it holds
everything else (format, ipc, classes, label names, inner learning rate, recipe and embedding-cache
fingerprints, Boost-DD stage, outer step, validation score) and ``sha256``, the digest of the safetensors
file. Rows are class-major: rows ``c*ipc .. c*ipc+ipc-1`` belong to class c (for soft labels: were
initialised as class c).

A token-level set (``embed.level: tokens``: it fine-tunes a pretrained transformer) holds ``x`` (ipc*C, T, d)
input embeddings, ``mask`` (ipc*C, T) float32 (1 = attend) and optionally ``attention_labels``
(ipc*C, L, H, Q, T) target attention probabilities (Q = 1: the [CLS] row; Q = T: every row); its sidecar says
``level: tokens`` and which model and initial model (``init_seed``) it was distilled for.

A set is a verified artifact: :meth:`SyntheticSet.load` (used by eval, report, export and
:func:`distillctl.load_set`) refuses a file whose sha256 differs from its sidecar's, or from the one the
run's ``manifest.json`` recorded when distill saved it, and refuses non-finite values. A set written before
digests existed loads with a warning on stderr (its contents cannot be checked).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillctl.console import err_console
from distillctl.errors import UserError
from distillctl.runs import atomic_write_bytes, atomic_write_json, manifest_set_digest
from distillctl.verified import NotVerified, read_verified, sha256_of

if TYPE_CHECKING:  # pragma: no cover
    import torch

FORMAT = "distillctl.distillation.synthetic-set/1"
#: sidecar keys written from the set's own fields, never from ``meta``
_SIDECAR_OWN = ("format", "ipc", "num_classes", "dim", "soft_labels", "inner_lr", "sha256", "level", "seq_len")


def sidecar_path(path: str | Path) -> Path:
    """``ipc10.safetensors`` -> ``ipc10.json``."""
    return Path(path).with_suffix(".json")


@dataclass
class SyntheticSet:
    """x: (ipc*C, d) float32 vectors, or (ipc*C, T, d) input embeddings with ``mask`` (ipc*C, T) (token level);
    labels: (ipc*C,) int64 or (ipc*C, C) float probabilities."""

    x: "torch.Tensor"
    labels: "torch.Tensor"
    ipc: int
    num_classes: int
    inner_lr: float | None = None  # learned inner learning rate, when `distill.inner.learn_lr` is set
    meta: dict[str, Any] = field(default_factory=dict)  # fingerprints, stage, outer step, val score, ...
    mask: "torch.Tensor | None" = None  # (ipc*C, T) float, 1 = attend: token level only
    attention_labels: "torch.Tensor | None" = None  # (ipc*C, L, H, Q, T) target attention probabilities

    def __post_init__(self) -> None:
        import torch

        n = self.ipc * self.num_classes
        if self.x.ndim == 3 or self.mask is not None:  # the token level
            if self.x.ndim != 3 or self.x.shape[0] != n:
                raise UserError(f"synthetic set: a token-level x must be (ipc*C, T, d) = ({n}, T, d), "
                                f"got {tuple(self.x.shape)}")
            if self.mask is None or tuple(self.mask.shape) != tuple(self.x.shape[:2]):
                got = None if self.mask is None else tuple(self.mask.shape)
                raise UserError(f"synthetic set: a token-level set needs mask ({n}, {self.x.shape[1]}), got {got}")
            if self.attention_labels is not None and (
                    self.attention_labels.ndim != 5 or self.attention_labels.shape[0] != n
                    or self.attention_labels.shape[-1] != self.x.shape[1]):
                raise UserError(f"synthetic set: attention_labels must be ({n}, L, H, Q, {self.x.shape[1]}), "
                                f"got {tuple(self.attention_labels.shape)}")
        elif self.x.ndim != 2 or self.x.shape[0] != n:
            raise UserError(f"synthetic set: x must be (ipc*C, d) = ({n}, d), got {tuple(self.x.shape)}")
        if self.labels.shape not in ((n,), (n, self.num_classes)):
            raise UserError(f"synthetic set: labels must be ({n},) or ({n}, {self.num_classes}), "
                            f"got {tuple(self.labels.shape)}")
        # A NaN or inf trains students to chance without any error further on: refuse it here.
        for name, t in (("x", self.x), ("labels", self.labels), ("mask", self.mask),
                        ("attention_labels", self.attention_labels)):
            if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                row = int((~torch.isfinite(t)).reshape(t.shape[0], -1).any(1).nonzero()[0])
                raise UserError(f"synthetic set: {name} holds {bad} non-finite values (NaN/inf), the first in row "
                                f"{row}; every value must be finite")
        if self.inner_lr is not None and not (isinstance(self.inner_lr, (int, float)) and math.isfinite(self.inner_lr)
                                              and self.inner_lr > 0):
            raise UserError(f"synthetic set: inner_lr is {self.inner_lr!r}; expected a finite number > 0 (or none)")
        if self.labels.ndim == 1:
            in_range = (self.labels >= 0) & (self.labels < self.num_classes)
            if self.labels.is_floating_point() or not bool(in_range.all()):
                raise UserError(f"synthetic set: hard labels must be integers in [0, {self.num_classes})")
        elif n:  # soft labels: one probability distribution per row (saved in float32: allow its rounding)
            sums = self.labels.double().sum(1)
            if bool((self.labels < 0).any()) or float((sums - 1).abs().max()) > 1e-3:
                raise UserError("synthetic set: soft labels must be probabilities (>= 0, each row summing to 1)")

    def __repr__(self) -> str:
        """One line (the dataclass default prints every tensor value): shape, labels, classes, digest."""
        names = self.label_names
        shown = ", ".join(names[:6]) + (", …" if len(names) > 6 else "")
        lr = f", inner_lr={self.inner_lr:.4g}" if self.inner_lr is not None else ""
        digest = f", sha256={self.sha256[:12]}…" if self.sha256 else ""
        return (f"SyntheticSet(ipc={self.ipc}, classes={self.num_classes} [{shown}], x={tuple(self.x.shape)} "
                f"{str(self.x.dtype).replace('torch.', '')}, {'soft' if self.soft else 'hard'} labels{lr}{digest})")

    __str__ = __repr__

    @property
    def soft(self) -> bool:
        """True when labels are (n, C) probabilities."""
        return self.labels.ndim == 2

    @property
    def dim(self) -> int:
        """d: the width of a vector, or of one input embedding at the token level."""
        return int(self.x.shape[-1])

    @property
    def level(self) -> str:
        """``vectors`` (x: (n, d)) or ``tokens`` (x: (n, T, d) input embeddings with a mask)."""
        return "tokens" if self.x.ndim == 3 else "vectors"

    @property
    def label_names(self) -> list[str]:
        return list(self.meta.get("label_names") or [str(c) for c in range(self.num_classes)])

    def initial_model(self):
        """Token level: the model this set was distilled for, ready to fine-tune on (x, mask, labels): the
        student plugin with the options recorded in the set, built under its ``init_seed`` (the pretrained
        body with that seed's head). Train it for ``meta["inner_steps"]`` steps at ``inner_lr``
        (``meta["inner"]["optimizer"]``) to reproduce the fine-tuning the set was made for."""
        from distillctl.distillation.tokens import initial_model

        return initial_model(self)

    def hard_labels(self) -> "torch.Tensor":
        """(n,) int64: the labels, or the most probable class of each soft label."""
        return self.labels.argmax(-1) if self.soft else self.labels

    @property
    def sha256(self) -> str | None:
        """The sha256 of the safetensors file this set was saved to or loaded (and verified) from."""
        return self.meta.get("sha256")

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (safetensors) and its ``.json`` sidecar (with the file's sha256), each atomically.

        ``meta["sha256"]`` is set to the new file's digest (distill records it in the run's manifest).
        """
        import torch
        from safetensors.torch import save

        path = Path(path)
        labels = self.labels.to(torch.float32) if self.soft else self.labels.to(torch.int64)
        tensors = {"x": self.x.detach().to(torch.float32).contiguous().cpu(),
                   "labels": labels.detach().contiguous().cpu()}
        for name in ("mask", "attention_labels"):  # token level
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name).detach().to(torch.float32).contiguous().cpu()
        blob = save(tensors, metadata={"format": FORMAT})
        digest = sha256_of(blob)
        atomic_write_bytes(path, blob)
        sidecar = {
            "format": FORMAT,
            "ipc": self.ipc,
            "num_classes": self.num_classes,
            "dim": self.dim,
            "soft_labels": self.soft,
            "inner_lr": self.inner_lr,
            **({"level": "tokens", "seq_len": int(self.x.shape[1])} if self.level == "tokens" else {}),
            **{k: v for k, v in self.meta.items() if k not in _SIDECAR_OWN},
            "sha256": digest,
        }
        atomic_write_json(sidecar_path(path), sidecar)
        self.meta["sha256"] = digest
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SyntheticSet":
        """Read and verify a set written by :meth:`save`; a missing, changed or inconsistent file, or
        non-finite values, are a :class:`UserError` naming the file."""
        from safetensors import SafetensorError
        from safetensors.torch import load as load_bytes

        path = Path(path)
        side = sidecar_path(path)
        if not path.is_file():
            raise UserError(f"{path}: synthetic set file not found")
        if not side.is_file():
            raise UserError(f"{path}: its JSON sidecar {side.name} is missing")
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{side}: invalid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise UserError(f"{side}: expected a JSON object")
        # The digest is of the bytes read here, and the tensors come from the same bytes (read once).
        recorded = meta.get("sha256")
        try:
            blob, actual = read_verified(path, recorded)
        except NotVerified as exc:
            raise UserError(f"{path}: contents changed since it was saved: sha256 {exc.actual[:12]}… on disk, "
                            f"{str(recorded)[:12]}… in {side.name}; restore the file or distill it again") from None
        if recorded is None:
            err_console().print(f"warning: {path}: no sha256 in {side.name} (saved by an older distillctl); its "
                                "contents cannot be verified", soft_wrap=True)
        in_manifest = manifest_set_digest(path)
        if in_manifest is not None and in_manifest[1] != actual:
            raise UserError(f"{path}: not the set this run saved: sha256 {actual[:12]}… on disk, "
                            f"{in_manifest[1][:12]}… in {in_manifest[0]}; restore the file or distill it again")
        try:
            tensors = load_bytes(blob)
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
        missing = [k for k in ("x", "labels") if k not in tensors] + [
            k for k in ("ipc", "num_classes") if k not in meta]
        if missing:
            raise UserError(f"{path}: not a distillctl synthetic set (missing {', '.join(missing)})")
        if meta.get("format", FORMAT) != FORMAT:
            raise UserError(f"{side}: unknown format {meta.get('format')!r} (expected {FORMAT})")
        inner_lr = meta.pop("inner_lr", None)
        ipc, num_classes = int(meta.pop("ipc")), int(meta.pop("num_classes"))
        for k in ("format", "dim", "soft_labels", "seq_len"):
            meta.pop(k, None)
        level = meta.pop("level", "vectors")
        if level == "tokens" and "mask" not in tensors:
            raise UserError(f"{path}: a token-level set without its mask tensor")
        meta["sha256"] = actual
        try:
            return cls(x=tensors["x"], labels=tensors["labels"], ipc=ipc, num_classes=num_classes,
                       inner_lr=inner_lr, meta=meta, mask=tensors.get("mask"),
                       attention_labels=tensors.get("attention_labels"))
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None
