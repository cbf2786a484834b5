"""Run directories and atomic writes.

Every stage writes into ``runs/<recipe-name>/<id>/``::

    recipe.resolved.yaml   manifest.json   metrics.jsonl   checkpoints/   distilled/   eval/   report.md

Writes go through :func:`atomic_write_bytes` (temp file in the same folder + fsync + rename), so an
interrupted process leaves either the old file or the new one, never half of one.

Each writer of a run directory holds an OS lock (:func:`run_lock`: ``flock`` on ``RUN/.locks/<role>.lock``)
while it runs, so a second distill (or eval, report, ...) of the same folder is refused with the
holder's PID and command instead of interleaving its files. The lock dies with its process: a killed run
leaves no stale lock behind.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from distillctl import __version__
from distillctl.devices import describe_device
from distillctl.errors import UserError
from distillctl.plugins import get_registry
from distillctl.recipe import load_recipe


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
    """Append one JSON object as a line (flushed + fsynced: metrics survive a crash).

    The line is written under an exclusive ``flock`` of the file: eval and baseline jobs of one run may
    append to ``eval/history.jsonl`` at the same time, and their lines must not interleave.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        _flock(fh, blocking=True)
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
        info["torch_threads"] = torch.get_num_threads()  # wall times depend on it (distillctl.threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        info["torch"] = None
    return info


#: the stages that run on a recipe's ``device`` field, and the section that holds it
DEVICE_STAGES = {"embed": "embed", "distill": "distill"}


def stage_devices(recipe, stage: str) -> dict:
    """``{section: describe_device(...)}`` for the device a stage runs on (``auto``: CUDA when torch sees it,
    else CPU), resolved on this machine; ``{}`` for a stage that uses none (submit, eval, baseline, report)."""

    section = DEVICE_STAGES.get(stage)
    name = getattr(getattr(recipe, section, None), "device", None) if section else None
    return {section: describe_device(name)} if name is not None else {}


def build_manifest(recipe, *, stage: str, argv: list[str] | None = None, extra: Mapping[str, Any] | None = None) -> dict:
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
        """Append one metrics record (a ``time`` field is added) and hand it to the open trackers
        (:func:`distillctl.tracking.publish`: queued, never blocking)."""
        from distillctl.tracking import publish

        record = {"time": round(time.time(), 3), **record}
        append_jsonl(self.metrics, record)
        publish(self.path, record)

    def load_recipe(self, overrides: list[str] | None = None):
        """The resolved recipe stored in this run directory."""

        if not self.recipe.exists():
            raise UserError(f"{self.path}: not a run directory (no recipe.resolved.yaml)")
        return load_recipe(self.recipe, overrides)


def new_run_path(recipe, root: str | Path | None = None) -> Path:
    """``<root or recipe.runs_dir>/<recipe.name>/<new id>`` (not created)."""
    root = Path(root if root is not None else recipe.runs_dir)
    return root / recipe.name / new_run_id()


def new_run_id() -> str:
    """A sortable, unique-enough id: UTC timestamp plus 4 hex digits."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-" + os.urandom(2).hex()


def create_run_dir(recipe, *, stage: str, run_dir: str | Path | None = None, root: str | Path | None = None,
                   argv: list[str] | None = None, extra_manifest: Mapping[str, Any] | None = None) -> RunDir:
    """Create ``<root>/<recipe.name>/<id>/`` (or ``run_dir`` as given) with the resolved recipe and manifest.

    An existing ``run_dir`` is reused (its resolved recipe and manifest are rewritten, the set digests of
    the manifest kept); nothing else in it is touched. Callers that must not reuse a run check
    :func:`refuse_existing_run` first (``distill --run-dir``).
    """
    if run_dir is None:
        path = new_run_path(recipe, root)
    else:
        path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    run = RunDir(path.resolve())
    manifest = build_manifest(recipe, stage=stage, argv=argv, extra=extra_manifest)
    before = _read_json(run.manifest)
    # the devices earlier stages ran on stay recorded (e.g. distill's GPU after a baseline job on a CPU node)
    manifest["devices"] = {**before.get("devices", {}), **manifest["devices"]}
    if before.get("sets"):  # the digests of sets finished before a resume (SyntheticSet.load checks them)
        manifest["sets"] = before["sets"]
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


# -- what a run directory holds ----------------------------------------------------------------

#: files and folders that mark a folder as holding a run (whatever stage wrote it)
RUN_MARKERS = ("recipe.resolved.yaml", "manifest.json", "metrics.jsonl", "distilled", "checkpoints", "eval")


def refuse_existing_run(path: str | Path) -> None:
    """A :class:`UserError` when ``path`` already holds a run: writing a new one there would mix the two
    (a new recipe and ``ipc1`` beside the old ``ipc2``, both then scored as one run)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"--run-dir {path}: not a folder")
    found = [name for name in RUN_MARKERS if (path / name).exists()]
    if found:
        raise UserError(f"--run-dir {path}: already holds a run ({', '.join(found)}); continue it with "
                        f"`--resume {path}` (same recipe), or give --run-dir a new or empty folder")


def record_set(run: RunDir, set_path: Path, sha256: str) -> None:
    """Put a saved set's sha256 into the run's manifest.json (``sets``: run-relative path -> digest).

    Called by the run's only distill (it holds the run's ``distill`` lock), so the read-modify-write of
    the manifest cannot race with another writer of it.
    """
    manifest = _read_json(run.manifest)
    rel = Path(set_path).resolve().relative_to(run.path).as_posix()
    manifest.setdefault("sets", {})[rel] = {"sha256": sha256}
    atomic_write_json(run.manifest, manifest)


def manifest_set_digest(set_path: Path) -> tuple[Path, str] | None:
    """``(manifest.json, sha256)`` recorded for ``RUN/distilled/ipcN.safetensors``; None when the file is not
    in a run directory or its manifest records no digest for it (sets saved by hand, older runs)."""
    set_path = Path(set_path).resolve()
    if set_path.parent.name != "distilled":
        return None
    run = set_path.parent.parent
    manifest = run / "manifest.json"
    entry = _read_json(manifest).get("sets", {}).get(set_path.relative_to(run).as_posix())
    digest = entry.get("sha256") if isinstance(entry, dict) else None
    return (manifest, digest) if isinstance(digest, str) else None


# -- run locks ---------------------------------------------------------------------------------

#: lock files inside a run directory, one per writer role (``distill``, ``eval``, ``baseline-random``, ...)
LOCK_FOLDER = ".locks"

# lock file -> [open file, depth]: a process that already holds a lock may take it again (a library caller
# nesting stage functions); flock would otherwise refuse the second open file of the same process.
_HELD: dict[Path, list] = {}


def _flock(fh, *, blocking: bool) -> bool:
    """Exclusive ``flock`` of an open file; False when ``blocking`` is off and another process holds it.
    No-op (True) where fcntl is missing (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locking
        return True
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _holder(lock_path: Path) -> str:
    """Who holds a lock, from what it wrote into the lock file: ``PID 123 on host since ...: `cmd```."""
    try:
        info = json.loads(lock_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict):  # it is between taking the lock and writing its name
        return "another process"
    command = " ".join(str(a) for a in info.get("command") or [])
    return (f"PID {info.get('pid')} on {info.get('host')} since {info.get('since')}"
            + (f" (`{command}`)" if command else ""))


@contextlib.contextmanager
def run_lock(folder: str | Path, role: str, *, argv: list[str] | None = None) -> Iterator[Path]:
    """Hold the exclusive ``role`` lock of a run directory, or raise a :class:`UserError` naming its holder.

    Writers of different files of one run take different roles, so a ``submit`` graph can evaluate ipc 1
    and run baselines while distill works on ipc 5 in the same folder; two writers of the same files (two
    distills, two evals) cannot run at once. The lock is an OS ``flock``: the kernel drops it when the
    process ends, however it ends, so a killed run never leaves a stale lock. The lock file holds the
    holder's PID, host, start time and command line, for the message of the process that is refused.
    """
    lock_path = Path(folder).resolve() / LOCK_FOLDER / f"{role}.lock"
    held = _HELD.get(lock_path)
    if held is not None:  # this process holds it already
        held[1] += 1
        try:
            yield lock_path
        finally:
            held[1] -= 1
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(lock_path, "a+", encoding="utf-8")
    try:
        if not _flock(fh, blocking=False):
            raise UserError(f"{Path(folder)}: another {role} is writing into this run directory: "
                            f"{_holder(lock_path)}; wait for it to end, or use another run directory")
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "role": role,
                             "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "command": list(argv if argv is not None else sys.argv)}))
        fh.flush()
        _HELD[lock_path] = [fh, 1]
        try:
            yield lock_path
        finally:
            _HELD.pop(lock_path, None)
            fh.truncate(0)  # no holder any more: a later refused process must not name this one
    finally:
        fh.close()  # closing the file releases the flock


def lock_holder(folder: str | Path, role: str) -> str | None:
    """Who holds the ``role`` lock of a run directory right now (``PID 123 on host since ...: `cmd```), or
    None when nobody does (or this process holds it). Probes with a non-blocking ``flock`` it drops at once."""
    lock_path = Path(folder).resolve() / LOCK_FOLDER / f"{role}.lock"
    if lock_path in _HELD or not lock_path.is_file():
        return None
    with open(lock_path, "a+", encoding="utf-8") as fh:
        if _flock(fh, blocking=False):
            return None  # free (closing the file drops the probe's lock)
    return _holder(lock_path)


def not_ready(folder: str | Path, what: str, fix: str) -> UserError:
    """The error for a stage that finds nothing to work on in a run directory: ``what`` is missing. While a
    distill writes the run, it names that process (PID, host, since when, command) instead of ``fix``."""
    busy = lock_holder(folder, "distill")
    if busy is not None:
        return UserError(f"{folder}: {what} yet: a distill is writing this run directory: {busy}; wait for it "
                         "to save a set (`distillctl status RUN` shows its progress)")
    return UserError(f"{folder}: {what} ({fix})")


def holds_run_lock(role: str | Callable[[tuple, dict], str],
                   locate: Callable[[tuple, dict], Path | None]) -> Callable:
    """Decorator: run a stage function under :func:`run_lock` of the run directory ``locate(args, kwargs)``
    returns (no lock when it returns None, e.g. an eval of a set file outside any run). ``role`` may be a
    function of the call too (``baseline-<kind>``)."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            folder = locate(args, kwargs)
            if folder is None:
                return fn(*args, **kwargs)
            name = role(args, kwargs) if callable(role) else role
            with run_lock(folder, name, argv=kwargs.get("argv")):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def existing_run_of(target: str | Path | None) -> Path | None:
    """The run directory a path names or sits in (``RUN`` or ``RUN/distilled/ipcN.safetensors``); None when it
    is no existing run directory (the stage function then reports that its own way)."""
    if target is None:
        return None
    target = Path(target)
    if target.is_file() and target.parent.name == "distilled":
        target = target.parent.parent
    return target if target.is_dir() and (target / "recipe.resolved.yaml").exists() else None
