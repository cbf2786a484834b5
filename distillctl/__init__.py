"""distillctl: dataset distillation for NLP in the embedding space of a frozen sentence encoder.

This module stays light (no torch, no pydantic) so that `distillctl --help` answers at once.
Plugin authors need ``hookimpl`` and ``UserError`` from here and ``PluginOptions`` from
``distillctl.options``; the base class of each plugin kind is listed in ``distillctl.hookspecs``
and ``docs/plugins.md``.
"""

import pluggy

from distillctl.errors import RunError, UserError

__version__ = "0.1.0"

#: Decorator for plugin hook implementations, e.g. ``@hookimpl def register_students(register): ...``.
hookimpl = pluggy.HookimplMarker("distillctl")



def load_set(path, ipc=None):
    """A distilled set for your own training code, verified: ``path`` is a set file
    (``RUN/distilled/ipcN.safetensors``), a run directory (then ``ipc``, default the largest of the run), or
    what ``distillctl export`` wrote (``.csv`` / ``.jsonl`` with their ``.meta.json``, ``.parquet``, a Hugging
    Face dataset folder), checked against the sha256 of the set it was exported from.

    Returns a :class:`distillctl.distillation.synthetic.SyntheticSet`: ``x`` (ipc*C, d) float32, ``labels`` (ipc*C,) int64 or
    (ipc*C, C) class probabilities, ``hard_labels()``, ``label_names``, ``inner_lr`` (when learned), ``sha256``
    and ``meta`` (fingerprints, stage, val accuracy). A file whose sha256 differs from the one recorded when
    it was saved, or that holds NaN/inf, raises :class:`UserError`.

    A token-level set (``level == "tokens"``) has ``x`` (ipc*C, T, d) input embeddings, ``mask`` (ipc*C, T),
    optionally ``attention_labels``, and in ``meta`` the model it was distilled for (``distill_students[0]``,
    ``student_source``, ``init_seed``, ``inner_steps``, ``inner``); ``initial_model()`` builds that model
    (pretrained body + the ``init_seed`` head) to fine-tune with ``model(x, mask)``.
    """
    from pathlib import Path

    from distillctl.evaluation.protocol import set_files
    from distillctl.distillation.synthetic import SyntheticSet

    from distillctl.reporting.exported import export_format, load_export

    path = Path(path)
    if export_format(path) is not None:
        if ipc is not None:
            raise UserError(f"{path}: ipc= selects a set of a run directory; this is one exported set")
        return load_export(path)
    if path.is_dir():
        found = {int(f.stem[3:]): f for f in set_files(path)}
        if not found:
            raise UserError(f"{path}: no distilled sets (expected {path / 'distilled'}/ipcN.safetensors)")
        if ipc is not None and ipc not in found:
            raise UserError(f"{path}: no set with ipc {ipc} (sets: {', '.join(f'ipc {k}' for k in sorted(found))})")
        path = found[max(found) if ipc is None else ipc]
    elif ipc is not None:
        raise UserError(f"{path}: ipc= selects a set of a run directory; this is one set file")
    return SyntheticSet.load(path)


__all__ = ["__version__", "hookimpl", "UserError", "RunError", "load_set"]
