"""Run directories and atomic writes.

Every stage writes into ``runs/<recipe-name>/<id>/``::

    recipe.resolved.yaml   manifest.json   metrics.jsonl   checkpoints/   distilled/   eval/   report.md

Writes go through :func:`atomic_write_bytes` (temp file in the same folder + fsync + rename), so an
interrupted process leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from distillctl import __version__
from distillctl.errors import UserError


# -- atomic writes -------------------------------------------------------------------------------

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file + fsync + rename (+ fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the result the usual mode (0666 minus the umask), so run
        # outputs stay readable by the group on shared machines and clusters.
        if hasattr(os, "fchmod"):  # POSIX
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_save_tensors(path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> Path:
    """Save a dict of torch tensors as safetensors, atomically. ``metadata`` values must be strings."""
    from safetensors.torch import save

    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                metadata=dict(metadata) if metadata else None)
    return atomic_write_bytes(path, blob)


def append_jsonl(path: str | Path, obj: Mapping[str, Any]) -> None:
    """Append one JSON object as a line (flushed + fsynced: metrics survive a crash)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file, ignoring a torn last line left by a crash."""
    out = []
    path = Path(path)
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


# -- provenance ----------------------------------------------------------------------------------

def git_sha(cwd: str | Path | None = None) -> str | None:
    """The git commit of the working directory (with ``+dirty``), or None outside a repository."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info() -> dict:
    """Versions of Python, torch and distillctl, and the machine."""
    info = {
        "distillctl": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover - torch is a dependency
        info["torch"] = None
    return info


#: the stages that run on a recipe's ``device`` field, and the section that holds it
DEVICE_STAGES = {"embed": "embed", "distill": "distill"}


def stage_devices(recipe, stage: str) -> dict:
    """``{section: describe_device(...)}`` for the device a stage runs on (``auto``: CUDA when torch sees it,
    else CPU), resolved on this machine; ``{}`` for a stage that uses none (submit, eval, baseline, report)."""
    from distillctl.devices import describe_device

    section = DEVICE_STAGES.get(stage)
    name = getattr(getattr(recipe, section, None), "device", None) if section else None
    return {section: describe_device(name)} if name is not None else {}


def build_manifest(recipe, *, stage: str, argv: list[str] | None = None, extra: Mapping[str, Any] | None = None) -> dict:
    from distillctl.plugins import get_registry

    registry = get_registry()
    manifest = {
        "stage": stage,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": list(argv if argv is not None else sys.argv),
        "cwd": os.getcwd(),
        "git_sha": git_sha(),
        "recipe_name": recipe.name,
        "recipe_fingerprint": recipe.fingerprint(),
        "seed": recipe.seed,
        "versions": environment_info(),
        "devices": stage_devices(recipe, stage),
        "plugins": [
            {k: v for k, v in p.as_dict().items() if k != "description"} for p in registry.all()
        ],
        "plugin_failures": [f.as_dict() for f in registry.failures],
    }
    if extra:
        manifest.update(extra)
    return manifest


# -- run directories -----------------------------------------------------------------------------

@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    path: Path

    @property
    def recipe(self) -> Path:
        return self.path / "recipe.resolved.yaml"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def distilled(self) -> Path:
        return self.path / "distilled"

    @property
    def eval(self) -> Path:
        return self.path / "eval"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def log(self, **record: Any) -> None:
        """Append one metrics record (a ``time`` field is added)."""
        append_jsonl(self.metrics, {"time": round(time.time(), 3), **record})

    def load_recipe(self, overrides: list[str] | None = None):
        """The resolved recipe stored in this run directory."""
        from distillctl.recipe import load_recipe

        if not self.recipe.exists():
            raise UserError(f"{self.path}: not a run directory (no recipe.resolved.yaml)")
        return load_recipe(self.recipe, overrides)


def new_run_id() -> str:
    """A sortable, unique-enough id: UTC timestamp plus 4 hex digits."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-" + os.urandom(2).hex()


def create_run_dir(recipe, *, stage: str, run_dir: str | Path | None = None, root: str | Path | None = None,
                   argv: list[str] | None = None, extra_manifest: Mapping[str, Any] | None = None) -> RunDir:
    """Create ``<root>/<recipe.name>/<id>/`` (or ``run_dir`` as given) with the resolved recipe and manifest.

    An existing ``run_dir`` is reused (its resolved recipe and manifest are rewritten); nothing
    else in it is touched.
    """
    if run_dir is None:
        root = Path(root if root is not None else recipe.runs_dir)
        path = root / recipe.name / new_run_id()
    else:
        path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    run = RunDir(path.resolve())
    manifest = build_manifest(recipe, stage=stage, argv=argv, extra=extra_manifest)
    # the devices earlier stages ran on stay recorded (e.g. distill's GPU after a baseline job on a CPU node)
    manifest["devices"] = {**_read_json(run.manifest).get("devices", {}), **manifest["devices"]}
    atomic_write_text(run.recipe, recipe.to_yaml())
    atomic_write_json(run.manifest, manifest)
    return run


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``; ``{}`` when it is absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def open_run_dir(path: str | Path) -> RunDir:
    """An existing run directory; a :class:`UserError` when it is not one."""
    path = Path(path)
    if not (path / "recipe.resolved.yaml").exists():
        raise UserError(f"{path}: not a run directory (no recipe.resolved.yaml)")
    return RunDir(path.resolve())
