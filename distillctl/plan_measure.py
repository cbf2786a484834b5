"""plan's measurement: the few things on this machine that every job's forecast is built from.

:mod:`distillctl.planning` forecasts a job as a sum of parts; this module measures the parts, each once per
recipe (however many jobs share it) and each capped in seconds, so ``plan`` stays short on 2 cores whatever
the recipe asks for:

    startup     a fresh process importing torch and the stages: this process's own start when ``plan`` runs
                as a command (``distillctl plan``: the same console script every job starts with), else a
                probe process
    embed       cache hit: load + verify the cached rows; miss: a sample encoded (vectors) or tokenised
                (tokens) in a child process and scaled to every text; the other parts then run on stand-in
                rows of the real shapes
    stages      the real ``distill`` of the first and the last Boost-DD stage (each a one-stage chain) for
                MEASURE_STEPS outer steps; stages between them interpolated by their inner-batch rows
    students    per student section, seed count K and batch rows B that a job trains with: the seconds of
                one training step (vectors: K stacked students; tokens: one fine-tuned student), of building
                the students, and of scoring one row; and the memory on top
    logreg      ``full``'s logistic regression on a quarter of the training rows, scaled to all of them
    report      the real ``report`` of the measurement run

Peak memory of each block is the resident set's high-water mark (Linux ``VmHWM``, reset before the block).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

#: outer steps measured per stage (or as many as MEASURE_STAGE_SECONDS allows): the first warms up, the (lower) median
#: of the intervals between the others is the steady step time (one interval alone varied by 2x between plans:
#: mrpc-mlp's ipc-25 step measured at 0.71 and 1.1 s, 0.65 s in the run)
MEASURE_STEPS = 6
#: each measured stage stops after this many seconds (a Transformer population, a fine-tuned student)
MEASURE_STAGE_SECONDS = 4.0
#: a token-level stage is measured for TOKEN_STAGE_STEPS outer steps (1-3.5 s each here): the first carries the
#: stage's warm-up, the second is the steady step (less its validation). One step alone forecast mrpc-finetune's
#: ipc-1 distill +39 % at full size (2026-12-07: step 1 took 1.81 s against 1.24 s steady; BENCHMARKS.md).
#: Measured for up to TOKEN_STAGE_SECONDS, so a slow first step still leaves time for the second
#: (Scaling the first stage from the last by its plain steps forecast agnews-finetune's ipc-1 distill at 1.71 GiB
#: for 1.29: a plain step's activations are bfloat16 while the inner step holds a float32 graph differentiated twice)
TOKEN_STAGE_STEPS = 2
TOKEN_STAGE_SECONDS = 20.0
#: bptt's inner population is measured with at most this many students and scaled to the recipe's (linearly: an
#: upper bound, vmapped students share work: mrpc-transformer's 4 measured as 2 x 2 took 1.27 s a step, measured
#: as 4 0.96 s, 0.92 s in the run; agnews-transformer's 12, one thread, ipc 10: 1.50 s at 2, 2.93 s at 4, 7.9 s
#: at 12, so 4 x 3 is 11 % over). Recipes whose jobs run two at a time measure their stages beside the rest
#: (:class:`StagesBeside`), which keeps agnews-transformer-ratbptt's plan at 24 s with 4 measured (35 s in turn)
MEASURE_POPULATION = 4
#: a student primitive times at least MIN_TIMED_STEPS steps after one warm-up step, and at most this long
PRIMITIVE_SECONDS = 0.25
MIN_TIMED_STEPS = 2
#: rows one vector student scores to time scoring (one chunk of the real loop: its memory too)
PREDICT_ROWS = 4096
#: token level: rows scored to time scoring (spread over the length distribution), val rows during the stage
TOKEN_SCORE_ROWS = 128
TOKEN_VAL_ROWS = 32
#: vector level: val rows a measured stage validates on, and test rows the report's measurement scores its sets on
#: (:func:`few_rows`). The validations are forecast from the student primitives (time and memory), the report
#: reads scores, not rows: scoring all 1,200 of agnews-transformer's val rows took 1.6-2.3 s a validation, two
#: validations a stage, and scoring agnews-transformer-ratbptt's five sets on 7,600 test rows 2.8 s, all of it
#: on the plan's critical path
FEW_ROWS = 64
#: token level: training texts the report's readout searches during the measurement (the rest: forecast), one
#: whole chunk of the readout (readable.READOUT_CHUNK), so its memory is the real one's
REPORT_REAL_ROWS = 256
#: texts encoded to time the encoder when the embedding cache is missing, in batches of SAMPLE_BATCH; one
#: more batch of the longest texts at the recipe's embed.batch_size gives the job's peak memory
EMBED_SAMPLE, SAMPLE_BATCH = 64, 16
#: full-logreg: fitted on LOGREG_FRACTION of the training rows (at least LOGREG_MIN_ROWS); lbfgs needs more
#: iterations on more rows, so time grows as rows ** LOGREG_EXPONENT (measured here on AG News and the
#: bundled sample, 4x the rows: 9.8x and 8.9x the seconds; 4 ** 1.6 = 9.2)
LOGREG_FRACTION, LOGREG_MIN_ROWS, LOGREG_EXPONENT = 0.25, 1000, 1.6


# -- memory ------------------------------------------------------------------------------------------------

def _status_kib(field_name: str) -> int | None:
    try:
        m = re.search(rf"{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def own_peak_bytes() -> int:
    """This process's peak resident set since its ``exec``: ``VmHWM`` (``ru_maxrss`` where there is no /proc,
    which also counts a forked parent's pages)."""
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kib) * 1024


class PeakMemory:
    """The peak resident set over a block: ``VmHWM`` reset at the start (Linux ``clear_refs``); elsewhere
    the process's peak so far (``ru_maxrss``, an upper bound). ``extra`` is the peak above the resident set
    at the start: what the block itself needed on top of what the process already held."""

    def __enter__(self) -> "PeakMemory":
        _trim()
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        self.start = (_status_kib("VmRSS") or 0) * 1024
        self.peak = 0
        self.extra = 0
        return self

    def __exit__(self, *exc: Any) -> None:
        kib = _status_kib("VmHWM")
        if kib is None:
            import resource

            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux (bytes on macOS: upper bound)
        self.peak = int(kib) * 1024
        self.extra = max(0, self.peak - self.start)

    def so_far(self) -> int:
        """``extra`` up to now, inside the block (0 where the peak cannot be read without ending the block)."""
        kib = _status_kib("VmHWM")
        return max(0, int(kib) * 1024 - self.start) if kib is not None else 0


def _trim() -> None:
    """Give freed memory back to the OS (gc, then glibc's malloc_trim), so a block's peak is not inflated by
    what an earlier block left in the heap."""
    import gc

    from distillctl.devices import release_freed_memory

    gc.collect()
    release_freed_memory()


# -- start-up ----------------------------------------------------------------------------------------------

@dataclass
class Startup:
    seconds: float  # a fresh process to the point where it trains (imports, plugins, torch's first training)
    peak_bytes: int  # its peak resident set then (without data)
    cold_bytes: int = 0  # its peak before training anything (jobs that train no student: embed, majority)
    how: str = "probe"  # "this process" (plan ran as a command) or "probe" (a child process)
    cold_seconds: float | None = None  # its age before training anything
    job_seconds: float | None = None  # wall time of a whole job that trains nothing (a real majority job:
    #                                   start, loading the rows, writing its results, exit)

    @property
    def warm_seconds(self) -> float:
        """What torch's first training adds to a job's start."""
        return max(0.0, self.seconds - (self.cold_seconds if self.cold_seconds is not None else self.seconds))


#: the modules every job imports before its work (the stages and what they import)
STAGE_MODULES = ("torch", "distillctl.cli", "distillctl.distillation.distill", "distillctl.evaluation.evaluate",
                 "distillctl.evaluation.baselines", "distillctl.reporting.report")


def process_age() -> float | None:
    """Seconds since this process started (Linux: its start in clock ticks since boot, against the boot clock),
    or None where that cannot be read."""
    import os

    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def fresh_process() -> bool:
    """Whether this process has not imported torch yet: its own start is then a job's start."""
    return "torch" not in sys.modules and process_age() is not None


def startup_here(recipe: Any) -> Startup:
    """A job's start measured in this process (call it first, in a process that has not imported torch): its
    age after importing the stages, loading the plugins and torch's first training (:func:`warm_up`)."""
    import importlib

    for name in STAGE_MODULES:
        importlib.import_module(name)
    from distillctl.plugins import get_registry

    get_registry()
    cold, cold_age = own_peak_bytes(), process_age()
    warm_up(recipe)
    return Startup(process_age() or 0.0, own_peak_bytes(), cold, "this process", cold_age)


#: the probe does what every job does before its work: start Python, import torch and the stages, load the
#: plugins, read the recipe and train two tiny students; it prints its peak resident set (KiB, VmHWM: its own,
#: unlike ru_maxrss, which counts the pages of the parent it was forked from), the seconds since the parent
#: started it (argv[1]) and its peak before training (KiB)
_STARTUP_CODE = ("import sys, time, torch, distillctl.cli, distillctl.distillation.distill, "
                 "distillctl.evaluation.evaluate, distillctl.evaluation.baselines, distillctl.reporting.report; "
                 "from distillctl.plugins import get_registry; get_registry();"
                 "from distillctl.plan_measure import _startup_child; _startup_child(float(sys.argv[1]), sys.argv[2:])")


def _startup_child(started: float, argv: list[str]) -> None:
    cold, cold_age = own_peak_bytes(), time.time() - started
    try:
        if argv:
            from distillctl.recipe import load_recipe

            warm_up(load_recipe(argv[0]))
    except Exception:  # a plugin only the parent has (tests): the imports alone
        pass
    print(own_peak_bytes() // 1024, time.time() - started, cold // 1024, cold_age)


def startup_probe(recipe: Any = None) -> Startup:
    """A job's start in a fresh interpreter (see ``_STARTUP_CODE``)."""
    with tempfile.TemporaryDirectory(prefix="distillctl-plan-") as tmp:
        args = []
        if recipe is not None:
            path = Path(tmp) / "recipe.yaml"
            path.write_text(recipe.to_yaml(), encoding="utf-8")
            args = [str(path)]
        out = subprocess.run([sys.executable, "-c", _STARTUP_CODE, repr(time.time()), *args], capture_output=True,
                             text=True, timeout=600)
    try:
        kib, seconds, cold, cold_age = out.stdout.strip().splitlines()[-1].split()
        return Startup(float(seconds), int(kib) * 1024, int(cold) * 1024, "probe", float(cold_age))
    except (ValueError, IndexError):
        return Startup(0.0, 0)


def _plan_folder(owner: Any) -> tuple[str, weakref.finalize]:
    """A ``distillctl-plan-*`` temporary folder for ``owner`` (a probe or a child) and its removal: run once,
    by the owner's reader (:func:`wait_probes`, ``result``), or when the owner is dropped unread (a measurement
    that raised between making it and reading it), or at exit."""
    import shutil

    folder = tempfile.mkdtemp(prefix="distillctl-plan-")
    return folder, weakref.finalize(owner, shutil.rmtree, folder, ignore_errors=True)


class JobProbe:
    """A real job that trains nothing, as ``submit`` starts it: ``distillctl baseline RECIPE --kind majority``
    into a temporary run folder, or with ``embed=True`` the embed job itself (the cache must be there: it would
    embed otherwise; a cache hit loads and verifies it, imports less and writes nothing, so it ends 15-25 %
    sooner than a majority job). Started with :meth:`start` and read with :meth:`seconds`. ``stand_in``: the
    width of a stand-in cache entry to write first (:func:`~distillctl.data.embed.write_stand_in_entry`, in this
    probe's own folder): the job then runs on it, where the real cache is missing (``data``: the dataset, loaded
    already)."""

    def __init__(self, recipe: Any, embed: bool = False, stand_in: int | None = None, data: Any = None):
        import os
        import shutil

        self.tmp, self._cleanup = _plan_folder(self)
        self.env = None
        if stand_in:
            from distillctl.data.cache import CACHE_ENV, file_hashes_path
            from distillctl.data.embed import write_stand_in_entry

            root = Path(self.tmp) / "cache"
            try:
                write_stand_in_entry(recipe, root, stand_in, data)
                if file_hashes_path().exists():  # the model checksums a real job finds memoised (~0.3 s to redo)
                    shutil.copyfile(file_hashes_path(), root / file_hashes_path().name)
            except OSError:
                self._cleanup()
                raise
            self.env = {**os.environ, CACHE_ENV: str(root)}
        self.recipe_file = Path(self.tmp) / "recipe.yaml"
        self.recipe_file.write_text(recipe.to_yaml(), encoding="utf-8")
        self.args = (["embed", str(self.recipe_file)] if embed else
                     ["baseline", str(self.recipe_file), "--kind", "majority", "--run-dir", str(Path(self.tmp) / "run")])
        self.proc = None
        self.t0 = 0.0
        self.ended: float | None = None  # when its job exited (perf_counter), noted by a thread

    def start(self) -> "JobProbe":
        script = Path(sys.executable).parent / "distillctl"
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "distillctl.cli"]
        self.t0 = time.perf_counter()
        try:
            self.proc = subprocess.Popen([*cmd, *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         env=self.env)
        except OSError:
            self.proc = None
            return self
        # its end is noted as it happens: the caller may read it later (a probe started while the plan waits
        # for its stages is read after them: timed to that read, a 2-s job measured 4.5-5.3 s)
        import threading

        def note_end(proc=self.proc) -> None:
            proc.wait()
            self.ended = time.perf_counter()

        threading.Thread(target=note_end, daemon=True).start()
        return self

    def seconds(self) -> float | None:
        return wait_probes([self])[0]


def wait_probes(probes: Sequence[JobProbe], timeout: float = 600.0) -> list[float | None]:
    """The wall seconds of each probe's job (None: not started, failed or past ``timeout``), each timed to its
    own end (as its thread noted it, else polled every 5 ms), so probes run at once are not timed to the
    slowest, nor a probe read late to its read."""
    out: list[float | None] = [None] * len(probes)
    running = {i for i, p in enumerate(probes) if p.proc is not None}
    deadline = time.perf_counter() + timeout
    while running and time.perf_counter() < deadline:
        for i in list(running):
            code = probes[i].proc.poll()
            if code is not None:
                # the end its thread noted (a probe read long after its exit), else now: within the 5-ms poll
                ended = getattr(probes[i], "ended", None) or time.perf_counter()
                out[i] = ended - probes[i].t0 if code == 0 else None
                running.discard(i)
        if running:
            time.sleep(0.005)
    for i in running:
        probes[i].proc.kill()
    for p in probes:
        p._cleanup()
    return out


def warm_up(recipe: Any) -> None:
    """What torch sets up the first time a process trains (allocator pools, vmapped autograd), which every job
    pays once: two tiny vector students trained two steps. (A token-level job's fine-tuned student is measured
    on its own: its first steps are in its primitive's warm-up.)"""
    import torch

    from distillctl.evaluation.training import TrainBudget, train_and_score
    from distillctl.plugins import get_registry

    C, d = 2, 16
    info = get_registry().get("student", "mlp") if _level(recipe) == "tokens" else None
    if info is not None:
        build = lambda: info.factory(d, C, info.options())  # noqa: E731
    else:
        from distillctl.evaluation.training import student_builder

        build = student_builder(recipe, d, C, recipe.student)
    x, y = torch.randn(8, d), torch.arange(8) % C  # (8, d), (8,)
    budget = dataclasses.replace(TrainBudget.from_eval(recipe.eval), steps=2)
    train_and_score(build, x, y, x, y, seeds=[0, 1], budget=budget, num_classes=C, quiet=True)


def _level(recipe: Any) -> str:
    return getattr(recipe.embed, "level", "vectors")


# -- the embedding cache, or stand-ins for it ----------------------------------------------------------------

@dataclass
class EmbedMeasure:
    cached: bool
    seconds: float  # the embed job's work (load + verify on a hit; build everything on a miss)
    peak: int  # bytes above a fresh process the embed job needs
    load_seconds: float  # loading the rows in a later job
    base_bytes: int  # bytes above a fresh process that holding the rows needs
    pending: Any = None  # a cache miss's sample child still running: :meth:`finish` waits for it
    release: Any = None  # a cache miss's sample child waiting to encode: :meth:`go` lets it start
    dim: int | None = None  # a cache miss's output width (the stand-in rows' width)
    running: Any = None  # a cache miss: whether its sample child is still at work (a callable)
    data: Any = None  # a cache miss: the dataset as read (what a stand-in cache entry is written from)

    def go(self) -> None:
        """Let a waiting sample child encode (it waits so the distill stages are measured without it beside:
        the encoder's matrix products beside a 1-thread stage made its steps 22-34 % slower)."""
        if self.release is not None:
            self.release()
            self.release = None

    def encoding(self) -> bool:
        """Whether a cache miss's sample child is still at work (waiting for :meth:`go` counts)."""
        return self.running is not None and self.running()

    def finish(self) -> None:
        self.go()
        if self.pending is not None:
            self.seconds, self.peak = self.pending()
            self.pending = None


def embeddings(recipe: Any, *, beside: bool = False) -> tuple[Any, EmbedMeasure]:
    """(embeddings, what the embed job and loading cost). A cache hit is loaded (what every later job does); a
    miss measures a sample in a child process (:class:`_SampleChild`) and stands in rows of the real shapes:
    random vectors, or at the token level a tokenised sample repeated to every split's size. With ``beside``
    the child goes on while the caller measures the rest (on another core: the caller's jobs use fewer threads
    than there are cores): it waits for ``go()`` (after the distill stages) before it loads its encoder, or,
    where it must report the width first, once the encoder is loaded; call ``finish()`` on the result before
    reading the embed job's cost. The stand-ins' width comes from the encoder's configuration where it can
    tell (:meth:`Encoder.dim_from_config`), else from the child once its encoder is loaded."""
    from distillctl.data import embed as embed_mod
    from distillctl.encoding import output_dim

    _, _, _, _, key = embed_mod._identities(recipe)
    manifest, _, _ = embed_mod._read_verified(embed_mod.entry_dir(key), key)
    if manifest is not None:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            emb = embed_mod.load_embeddings(recipe, quiet=True)
            load = time.perf_counter() - t0
        return emb, EmbedMeasure(True, load, mem.extra, load, mem.extra)
    from distillctl.data.embed import _load_dataset

    source, encoder, _, _, _ = embed_mod._identities(recipe)
    tokens = _level(recipe) == "tokens"
    width = None if tokens else encoder.dim_from_config()
    # beside: the child waits before loading its encoder where the width is known without it, else once loaded
    child = _SampleChild(recipe, gate=("-" if not beside else "load" if width else "encode"))
    data = _load_dataset(source, recipe.embed.bad_rows)
    n_rows = sum(len(sp) for sp in data.splits.values())
    dim = child.dim() if width is None else output_dim(encoder, data.splits["train"].pairs is not None, width)
    if dim is None:  # plugins this process has but a child would not (tests, embedding applications)
        seconds, extra, dim = _sample_embed(recipe, encoder, data, n_rows)
        pending = None
    else:
        width = 2 * recipe.embed.max_length * 8 if tokens else dim * 4  # bytes per row: ids + mask / float32

        def pending() -> tuple[float, int]:
            out = child.result()
            if out is None:
                return _sample_embed(recipe, encoder, data, n_rows)[:2]
            return out["seconds"], max(0, out["peak"] - out["fresh"]) + 2 * n_rows * width  # rows held twice
        seconds, extra = 0.0, 0
    emb = _stand_in_tokens(recipe, encoder, data) if tokens else _stand_in(data, dim, recipe)
    width = (2 * recipe.embed.max_length * 8) if tokens else dim * 4
    held = n_rows * width
    em = EmbedMeasure(False, seconds, extra, held / 200e6, held, pending,  # reading + checksumming: ~200 MB/s
                      child.release if pending is not None else None, dim,
                      (lambda: child.proc is not None and child.proc.poll() is None) if pending is not None else None,
                      data)
    if not beside:
        em.finish()
    return emb, em


class _SampleChild:
    """:func:`_sample_embed` in a fresh interpreter (the recipe as a resolved YAML file), as the embed job: its
    own peak, no encoder left in this process. It prints its output width as soon as the encoder is loaded,
    then {seconds, peak, dim, fresh (its peak before the encoder)}. ``gate``: where it waits for
    :meth:`release` (a line on its stdin): ``load`` before it loads the encoder (and so prints nothing before),
    ``encode`` after printing the width, ``-`` nowhere."""

    def __init__(self, recipe: Any, gate: str = "-"):
        self.tmp, self._cleanup = _plan_folder(self)
        path = Path(self.tmp) / "recipe.yaml"
        path.write_text(recipe.to_yaml(), encoding="utf-8")
        code = "import sys; from distillctl.plan_measure import _embed_child; _embed_child(sys.argv[1], sys.argv[2])"
        self.gated = gate != "-"
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code, str(path), gate],
                                         stdout=subprocess.PIPE, stdin=subprocess.PIPE if self.gated else None,
                                         stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.proc = None

    def release(self) -> None:
        """Let a gated child encode (once; communicate() closes its stdin after)."""
        if self.gated and self.proc is not None:
            self.gated = False
            try:
                self.proc.stdin.write("go\n")
                self.proc.stdin.flush()
            except (OSError, ValueError):
                pass  # it has exited: result() tells

    def dim(self) -> int | None:
        import json

        try:
            return int(json.loads(self.proc.stdout.readline())["dim"]) if self.proc else None
        except (ValueError, KeyError, TypeError):
            self.result()
            return None

    def result(self) -> dict | None:
        import json

        try:
            if self.proc is None:
                return None
            self.release()
            out, _ = self.proc.communicate(timeout=900)
            return json.loads(out.strip().splitlines()[-1]) if self.proc.returncode == 0 else None
        except (subprocess.SubprocessError, ValueError, IndexError):
            self.proc.kill()
            return None
        finally:
            self._cleanup()


def _embed_child(recipe_file: str, gate: str = "-") -> None:
    """The child of :class:`_SampleChild`: prints its output width, then one JSON line; waits for a line on
    stdin (or its end) before loading the encoder (``gate`` = ``load``) or after printing the width
    (``encode``)."""
    import json

    import torch  # noqa: F401 - a job holds it before it embeds: its pages are in the fresh peak

    from distillctl.data import embed as embed_mod
    from distillctl.data.embed import _load_dataset
    from distillctl.recipe import load_recipe
    from distillctl.threads import configure_threads

    configure_threads(None)
    fresh = own_peak_bytes()
    recipe = load_recipe(recipe_file)
    source, encoder, _, _, _ = embed_mod._identities(recipe)
    data = _load_dataset(source, recipe.embed.bad_rows)
    n_rows = sum(len(sp) for sp in data.splits.values())

    def say(dim: int) -> None:
        print(json.dumps({"dim": dim}), flush=True)
        if gate == "encode":
            sys.stdin.readline()

    if gate == "load":
        sys.stdin.readline()
    seconds, _, dim = _sample_embed(recipe, encoder, data, n_rows, loaded=say,
                                    before_peak=(lambda: every_core_once_closed(sys.stdin)) if gate != "-" else None)
    print(json.dumps({"seconds": seconds, "peak": own_peak_bytes(), "dim": dim, "fresh": fresh}), flush=True)
    _quick_exit()


def every_core_once_closed(stdin: Any) -> bool:
    """Before the sample's largest batch, which only measures memory: once the caller has closed ``stdin`` (a
    pipe whose one line, the gate's, was read: it waits for nothing else now), torch uses every core this process
    may use (AG News's 64 longest texts took 4.1 s on one thread, at the end of the plan's critical path).
    Returns whether it did."""
    import select

    import torch

    from distillctl.threads import allowed_cores

    if not select.select([stdin], [], [], 0)[0]:  # nothing to read: the caller is still at work
        return False
    torch.set_num_threads(max(torch.get_num_threads(), allowed_cores()[0]))
    return True


def _quick_exit() -> None:
    """End a measuring child once it has printed its result (its files are closed): the interpreter's teardown
    with torch and transformers loaded took ~1 s, which the plan waited for."""
    import os

    sys.stdout.flush()
    os._exit(0)


def _tokens(text: str, cap: int | None) -> float:
    """A text's tokens, estimated from its characters (~4 per token for English) and capped where the encoder
    stops reading; what a batch costs is its size x its longest text (padding)."""
    n = len(text) / 4 + 2
    return min(n, cap) if cap else n


def batch_cost(lengths: Sequence[float], batch_size: int) -> float:
    """Sum over batches of (rows x longest row) when texts are encoded sorted by length, as the embed stage does."""
    ls = sorted(lengths)
    return sum(len(ls[i:i + batch_size]) * ls[i:i + batch_size][-1] for i in range(0, len(ls), batch_size))


def _sample_embed(recipe: Any, encoder: Any, data: Any, n_rows: int, loaded: Any = None,
                  before_peak: Any = None) -> tuple[float, int, int]:
    """(embed job seconds, bytes the embed job needs above this process, output width) from EMBED_SAMPLE texts
    encoded, plus one batch of the longest texts at ``embed.batch_size`` (the job's largest activations).

    The sample is spread over the length distribution (evenly spaced in the sorted texts) and encoded in sorted
    batches of SAMPLE_BATCH; seconds per unit of :func:`batch_cost` then scale to every text of every split in
    batches of ``embed.batch_size`` (second sentences of pairs are texts too). A tokenizer (token level) is
    timed on the sample the same way (its cost is per text, not per padded batch). ``loaded(width)`` is called
    as soon as the encoder is loaded, ``before_peak()`` after the timed sample, before the largest batch."""
    from distillctl.devices import resolve_device
    from distillctl.encoding import output_dim

    tokens = _level(recipe) == "tokens"
    t0 = time.perf_counter()
    texts_all = [t for sp in data.splits.values() for t in list(sp.texts) + list(sp.pairs or [])]
    t_data = time.perf_counter() - t0
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        encoder.load(str(resolve_device(recipe.embed.device, field="embed.device")))
        t_load = time.perf_counter() - t0
        cap = getattr(encoder, "max_tokens", None)
        train = data.splits["train"]
        if loaded is not None:  # the output width, for whoever waits on it
            loaded(int(encoder.dim) if tokens else output_dim(encoder, train.pairs is not None))
        order = sorted(range(len(train.texts)), key=lambda i: len(train.texts[i]))
        k = min(EMBED_SAMPLE, len(order))
        pick = [order[round(j * (len(order) - 1) / max(1, k - 1))] for j in range(k)]
        texts = [train.texts[i] for i in pick]
        pairs = None if train.pairs is None else [train.pairs[i] for i in pick]
        encoder.encode(texts[:4], None if pairs is None else pairs[:4], batch_size=SAMPLE_BATCH)  # warm-up
        t0 = time.perf_counter()
        encoder.encode(texts, pairs, batch_size=SAMPLE_BATCH)
        seconds = time.perf_counter() - t0
        if not tokens:  # the largest batch the job encodes: the longest texts at the recipe's batch size
            if before_peak is not None:
                before_peak()
            big = order[-min(recipe.embed.batch_size, len(order)):]
            encoder.encode([train.texts[i] for i in big], None if train.pairs is None else [train.pairs[i] for i in big],
                           batch_size=recipe.embed.batch_size)
    if tokens:  # a tokenizer's cost is per text
        encode = seconds * len(texts_all) / max(1, len(texts) + len(pairs or []))
        dim = int(encoder.dim)
    else:
        sample_lengths = [_tokens(t, cap) for t in texts + (pairs or [])]
        all_lengths = [_tokens(t, cap) for t in texts_all]
        per_unit = seconds / max(1e-9, batch_cost(sample_lengths, SAMPLE_BATCH))
        encode = per_unit * batch_cost(all_lengths, recipe.embed.batch_size)
        dim = output_dim(encoder, pairs is not None)
    return t_data + t_load + encode, mem.extra + 2 * n_rows * dim * 4, dim


class _Split:
    def __init__(self, X, y, ids=None, mask=None, type_ids=None):
        self.X, self.y, self.ids, self.mask, self.type_ids = X, y, ids, mask, type_ids


class StandIn:
    """Rows of the real shapes and class balance for the measurement when the embedding cache is missing."""

    def __init__(self, splits, label_names, dim, level="vectors", tokens=None):
        self.splits, self.label_names, self.num_classes, self.dim = splits, label_names, len(label_names), dim
        self.level, self.tokens = level, tokens
        self.fingerprint = "plan-stand-in"
        self.notes: list[str] = []
        import torch

        self.class_counts = {k: torch.bincount(s.y, minlength=self.num_classes).tolist() for k, s in splits.items()}

    def texts(self, split):
        return [f"{split} {i}" for i in range(len(self.splits[split].y))]


def _labels(data: Any, recipe: Any) -> dict:
    """Each split's labels (torch int64), with the held-out splits carved from train as the embed stage does
    (stratified, the recipe's seed)."""
    import numpy as np
    import torch

    from distillctl.seeds import carve_seed
    from distillctl.textdata import carve_val

    labels = {name: np.asarray(list(s.labels), dtype=np.int64) for name, s in data.splits.items() if len(s) > 0}
    for held, size in (("test", recipe.embed.test_size), ("val", recipe.embed.val_size)):
        if held not in labels:
            tr, ho = carve_val(labels["train"], size, carve_seed(recipe.seed, held), where=f"embed.{held}_size",
                               what=held)
            labels[held], labels["train"] = labels["train"][ho], labels["train"][tr]
    return {k: torch.from_numpy(v) for k, v in labels.items()}


def _stand_in(data: Any, dim: int, recipe: Any) -> StandIn:
    return stand_in_of_labels(_labels(data, recipe), list(data.label_names), dim)


def stand_in_of_labels(labels: dict, label_names: list[str], dim: int) -> StandIn:
    """Stand-in vectors of width ``dim`` for each split's labels ``{split: (n,) int64}``: the same random rows
    for the same labels wherever they are made (a child given the labels measures on the caller's rows)."""
    import torch

    g = torch.Generator().manual_seed(0)
    splits = {name: _Split(torch.randn(len(y), dim, generator=g), y.long()) for name, y in labels.items()}
    return StandIn(splits, list(label_names), dim)


def few_rows(emb: Any, split: str = "val", rows: int = FEW_ROWS) -> Any:
    """A shallow copy of vector rows ``emb`` whose ``split`` keeps ``rows`` rows, evenly spaced (every class of a
    class-sorted split). The measured stages validate on a few val rows (their validations are forecast from the
    student primitives), and the report's measurement scores its sets on a few test rows (the report reads the
    scores, not the rows): scoring every row there only made the plan longer."""
    import copy

    import torch

    part = emb.splits.get(split) if getattr(emb, "level", "vectors") != "tokens" else None
    if part is None or len(part.y) <= rows:
        return emb
    keep = torch.linspace(0, len(part.y) - 1, rows).round().long()  # (rows,)
    short = copy.copy(part)
    short.X, short.y = part.X[keep], part.y[keep]
    out = copy.copy(emb)
    out.splits = {**emb.splits, split: short}
    counts = dict(getattr(emb, "class_counts", None) or {})
    if counts:
        counts[split] = torch.bincount(short.y, minlength=int(emb.num_classes)).tolist()
        out.class_counts = counts
    return out


def _stand_in_tokens(recipe: Any, encoder: Any, data: Any) -> StandIn:
    """Token rows: a length-spread sample of the training texts tokenised, repeated to every split's size."""
    import torch

    train = data.splits["train"]
    order = sorted(range(len(train.texts)), key=lambda i: len(train.texts[i]))
    k = min(4 * EMBED_SAMPLE, len(order))
    pick = [order[round(j * (len(order) - 1) / max(1, k - 1))] for j in range(k)]
    out = encoder.encode([train.texts[i] for i in pick], None if train.pairs is None else [train.pairs[i] for i in pick],
                         batch_size=64)
    g = torch.Generator().manual_seed(0)
    splits = {}
    for name, y in _labels(data, recipe).items():
        rows = torch.randint(0, k, (len(y),), generator=g)
        get = lambda key: None if key not in out else torch.as_tensor(out[key])[rows]  # noqa: E731
        splits[name] = _Split(None, y.long(), ids=get("ids"), mask=get("mask"), type_ids=get("type_ids"))
    return StandIn(splits, list(data.label_names), int(encoder.dim), "tokens", encoder.meta())


# -- distill stages ---------------------------------------------------------------------------------------

def small(recipe: Any, sets: Sequence[str] = ()) -> Any:
    """A copy of ``recipe`` with ``sets`` applied (and no trackers), validated again."""
    from distillctl.recipe import apply_overrides, validate_recipe

    data = recipe.to_dict()
    data["tracking"] = []
    return validate_recipe(apply_overrides(data, list(sets)), source="plan")


@dataclass
class StageMeasure:
    ipc: int
    step_seconds: float  # one steady outer step
    warmup_seconds: float  # what the first step costs beyond a steady one
    overhead_seconds: float  # the stage's set-up and saving (wall time outside its steps and validations)
    val_seconds: float  # one validation as measured (vectors: 1 training step; tokens: TOKEN_VAL_ROWS rows)
    steps_measured: int
    peak_bytes: int  # above a fresh process with the rows loaded
    measured: bool = True  # False: interpolated between the measured stages


def stage_times(records: list[dict], ipc: int) -> tuple[float, float, float, float, int]:
    """(steady step s, warm-up extra s, one validation s, stage elapsed s, steps) from a stage's metrics."""
    rows = [r for r in records if r.get("ipc") == ipc]
    steps = sorted((r for r in rows if "loss" in r), key=lambda r: r["step"])
    vals = [r for r in rows if "val_accuracy" in r]
    val_total = max((r.get("val_seconds") or 0.0) for r in vals) if vals else 0.0
    n_val = max(1, len(vals))
    first_val = min(vals, key=lambda r: r["step"]).get("val_seconds", 0.0) if vals else 0.0
    end = max((r.get("elapsed") or 0.0) for r in rows) if rows else 0.0
    plain = [r for r in steps if "val_accuracy" not in r]  # steps without a validation in their elapsed
    if len(plain) >= 2:
        # the lower median: what slows a step here (page faults on fresh memory, another process) only adds,
        # and two intervals such as mrpc-mlp's 1.56 and 0.85 s (0.65 s steady) have the mean for their median
        step = statistics.median_low((b["elapsed"] - a["elapsed"]) / (b["step"] - a["step"])
                                 for a, b in zip(plain, plain[1:]) if b["step"] > a["step"])
        a = plain[0]
        warm = max(0.0, a["elapsed"] - first_val - step * a["step"])
    elif len(plain) == 1 and steps[-1]["step"] > plain[0]["step"]:
        # token level: a plain first step, then a step validated at its end (val_seconds is cumulative)
        a, b = plain[0], steps[-1]
        val_before = max((r.get("val_seconds") or 0.0) for r in vals if r["step"] <= a["step"]) if vals else 0.0
        step = max(0.0, (b["elapsed"] - a["elapsed"] - ((b.get("val_seconds") or 0.0) - val_before))
                   / (b["step"] - a["step"]))
        warm = max(0.0, a["elapsed"] - val_before - step * a["step"])
    elif steps:
        step = max(0.0, (end - val_total) / len(steps))
        warm = 0.0
    else:
        step, warm = 0.0, 0.0
    return step, warm, val_total / n_val, end, len(steps)


def stage_rows(recipe: Any, ipc: int, C: int) -> int:
    """Synthetic rows one inner step trains on at stage ``ipc`` (``inner.batch_per_class`` per class, or the
    whole set): what makes one stage's outer step dearer than another's."""
    per = getattr(recipe.distill.inner, "batch_per_class", None)
    return (min(ipc, per) if per else ipc) * C


def stage_overrides(recipe: Any, steps: int, max_seconds: float) -> list[str]:
    """The ``--set`` overrides of a measured one-stage distill (add ``distill.ipc=[k]``): ``steps`` outer steps
    or ``max_seconds``, one validation at the end, no patience, and validations that cost little (vectors: one
    training step; tokens: TOKEN_VAL_ROWS val rows), since they are forecast apart from the student primitives."""
    sets = [f"distill.outer.iterations={steps}", f"distill.outer.val_every={steps}",
            f"distill.outer.ckpt_every={steps}", "distill.outer.patience=null",
            f"distill.outer.max_seconds={max_seconds}"]
    return sets + ([f"distill.tokens.val_rows={TOKEN_VAL_ROWS}"] if _level(recipe) == "tokens" else ["eval.steps=1"])


def measure_stages(recipe: Any, emb: Any, tmp: Path) -> tuple[dict[int, StageMeasure], Path | None]:
    """The first and the last stage of the chain, each as a one-stage distill of MEASURE_STEPS outer steps
    (TOKEN_STAGE_STEPS at the token level), validating with one training step on FEW_ROWS val rows (at
    the token level on TOKEN_VAL_ROWS val rows): vector validations are forecast from the student primitives.
    The stages between them are interpolated by :func:`stage_rows`.
    Returns the stages and the run folder of the last one (its sets feed the report's measurement)."""
    from distillctl.distillation.distill import distill
    from distillctl.runs import read_jsonl

    chain = list(recipe.distill.ipc)
    tokens = _level(recipe) == "tokens"
    measured = sorted({chain[0], chain[-1]})
    sets = stage_overrides(recipe, TOKEN_STAGE_STEPS if tokens else MEASURE_STEPS,
                           TOKEN_STAGE_SECONDS if tokens else MEASURE_STAGE_SECONDS)
    # bptt's inner population trains vmapped, each student on its own: measured with MEASURE_POPULATION of them,
    # its step time and memory scaled to the recipe's (a population of 12 Transformers: one step ~10 s here)
    pop = recipe.distill.inner.population
    scale = 1.0
    if recipe.distill.method.name == "bptt" and pop > MEASURE_POPULATION:
        sets.append(f"distill.inner.population={MEASURE_POPULATION}")
        scale = pop / MEASURE_POPULATION
    out: dict[int, StageMeasure] = {}
    run = None
    rows = emb if tokens else few_rows(emb, "val")  # (its validations are forecast apart, time and memory)
    for ipc in measured:
        run = tmp / f"stage{ipc}"
        r = small(recipe, sets + [f"distill.ipc=[{ipc}]"])
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            distill(r, run_dir=run, embeddings=rows, quiet=True)
            wall = time.perf_counter() - t0
        step, warm, val_one, elapsed, n = stage_times(read_jsonl(run / "metrics.jsonl"), ipc)
        out[ipc] = StageMeasure(ipc, step * scale, warm * scale, max(0.0, wall - elapsed), val_one, n,
                                int(mem.extra * scale))
    if not tokens:
        out = bound_first_stage(out)
    return interpolate_stages(recipe, out, chain, int(emb.num_classes)), run


def bound_first_stage(stages: dict[int, StageMeasure]) -> dict[int, StageMeasure]:
    """The measured vector stages, the first one's step bounded by the last one's: a first stage that ran a
    single step (it outlasted MEASURE_STAGE_SECONDS) timed its warm-up with it (mrpc-mlp's ipc-1 stage: 4.5 s,
    then 0.6 s a step; forecast at 4.7 s a step). A steady step is no longer on fewer rows, so where the last
    stage measured a steady step that is shorter, that is the first stage's, and the rest was warm-up."""
    lo, hi = min(stages), max(stages)
    a, b = stages[lo], stages[hi]
    if a.steps_measured < 2 <= b.steps_measured and a.step_seconds > b.step_seconds:
        return {**stages, lo: dataclasses.replace(a, step_seconds=b.step_seconds,
                                                  warmup_seconds=a.warmup_seconds + a.step_seconds - b.step_seconds)}
    return stages


class StagesBeside:
    """:func:`measure_stages` in a child process on a core of its own, while the caller measures the students:
    for recipes whose jobs run two at a time (``workers``) on cores that fit two of them (the stages are then
    measured as the jobs run; beside a students' measurement on 2 cores a Transformer stage's step took 0-11 %
    longer than alone). The child is a fresh process with the rows loaded and torch warmed up, as a distill job
    is when its stage starts, so its memory is measured on a clean heap too. :meth:`result` returns the stages
    and the last stage's run folder, or None if the child failed (the caller then measures in-process).
    ``stand_in``: the embedding cache is missing: the child measures on these stand-in rows, made again from
    their labels (a file in ``tmp``), not from the dataset read again (AG News: 2-2.7 s on the plan's critical
    path)."""

    def __init__(self, recipe: Any, tmp: Path, threads: int, stand_in: "StandIn | None" = None):
        import os

        import torch

        from distillctl.threads import MACHINE_VARIABLE, THREAD_VARIABLES

        recipe_file = tmp / "stages-recipe.yaml"
        recipe_file.write_text(recipe.to_yaml(), encoding="utf-8")
        rows = "-"  # the cached rows
        if stand_in is not None:
            rows = str(tmp / "stand-in-labels.pt")
            torch.save({"labels": {k: s.y for k, s in stand_in.splits.items()},
                        "label_names": list(stand_in.label_names), "dim": int(stand_in.dim)}, rows)
        env = {k: v for k, v in os.environ.items() if k != MACHINE_VARIABLE}
        env.update({name: str(threads) for name in THREAD_VARIABLES})
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", _STAGES_CODE, str(recipe_file), str(tmp), rows],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        except OSError:
            self.proc = None

    def succeeded(self) -> bool:
        """Whether the child has finished, without an error (its result is then read without waiting)."""
        return self.proc is not None and self.proc.poll() == 0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def result(self) -> tuple[dict[int, StageMeasure], Path] | None:
        if self.proc is None:
            return None
        try:
            out, _ = self.proc.communicate(timeout=600)
        except subprocess.SubprocessError:
            self.proc.kill()
            return None
        if self.proc.returncode != 0 or not out.strip():
            return None
        data = json.loads(out.strip().splitlines()[-1])
        return {int(k): StageMeasure(**v) for k, v in data["stages"].items()}, Path(data["run"])


_STAGES_CODE = ("import sys; from distillctl.plan_measure import _stages_child; "
                "_stages_child(sys.argv[1], sys.argv[2], sys.argv[3])")


def _stages_child(recipe_file: str, tmp: str, rows: str = "-") -> None:
    """The child of :class:`StagesBeside`: prints the stages as one JSON line. ``rows``: a file of the stand-in
    rows' labels (the cache is missing), or ``-``: the cached rows."""
    import torch

    from distillctl.recipe import load_recipe

    recipe = load_recipe(recipe_file)
    if rows == "-":
        emb = embeddings(recipe)[0]
    else:
        given = torch.load(rows)
        emb = stand_in_of_labels(given["labels"], given["label_names"], given["dim"])
    warm_up(recipe)
    stages, run = measure_stages(recipe, emb, Path(tmp))
    print(json.dumps({"stages": {str(k): dataclasses.asdict(v) for k, v in stages.items()}, "run": str(run)}),
          flush=True)
    _quick_exit()


def interpolate_stages(recipe: Any, measured: dict[int, StageMeasure], chain: Sequence[int], C: int
                       ) -> dict[int, StageMeasure]:
    """Every stage of ``chain``: the measured ones as they are, the others linear in :func:`stage_rows` between
    the smallest and the largest measured stage (the mean of the two where both have the same rows)."""
    out = dict(measured)
    lo, hi = min(measured), max(measured)
    a, b = measured[lo], measured[hi]
    ra, rb = stage_rows(recipe, lo, C), stage_rows(recipe, hi, C)
    for ipc in chain:
        if ipc in out:
            continue
        w = 0.5 if rb == ra else (stage_rows(recipe, ipc, C) - ra) / (rb - ra)
        mix = lambda x, y: x + w * (y - x)  # noqa: E731
        out[ipc] = StageMeasure(ipc, mix(a.step_seconds, b.step_seconds), mix(a.warmup_seconds, b.warmup_seconds),
                                mix(a.overhead_seconds, b.overhead_seconds), mix(a.val_seconds, b.val_seconds), 0,
                                int(mix(a.peak_bytes, b.peak_bytes)), measured=False)
    return out


# -- student primitives ------------------------------------------------------------------------------------

@dataclass
class StudentCost:
    """What training and scoring one student section costs here. Vectors: ``setup[K]`` builds K stacked
    students, ``step[(K, B)]`` is one step of all K on B rows. Tokens (one fine-tuned student at a time):
    ``setup[1]`` builds one, ``step[(1, B)]`` is its step. ``row``: seconds to score one row with one student.
    ``peak[(K, B)]``: bytes on top of the loaded process while training; ``predict_peak`` while scoring
    ``predict_rows`` rows alone (after a trim); ``scored_peak[(K, B)]`` (vectors) while training and then scoring
    ``scored_rows[(K, B)]`` rows (the most its calls score at a time) with one of the K students while all K are
    still held, as ``train_and_score`` does: what training leaves behind and scoring stack, so neither alone is
    the job's peak, and what training leaves depends on B (one increment per K, measured at its largest B, left
    agnews-mlp-transfer's evals 22-27 % under); ``state_bytes``: what one trained student holds (tokens:
    :func:`held_bytes`)."""

    setup: dict[int, float] = field(default_factory=dict)
    step: dict[tuple[int, int], float] = field(default_factory=dict)
    row: float = 0.0
    peak: dict[tuple[int, int], int] = field(default_factory=dict)
    predict_peak: int = 0
    predict_rows: int = 0
    scored_peak: dict[tuple[int, int], int] = field(default_factory=dict)
    scored_rows: dict[tuple[int, int], int] = field(default_factory=dict)
    state_bytes: int = 0
    param_bytes: int = 0


def _timed_steps(step_once, least: int = MIN_TIMED_STEPS) -> tuple[float, float]:
    """(seconds per call, what the first call took beyond that) of ``step_once``: the first call, then at least
    ``least`` calls, more until PRIMITIVE_SECONDS have passed (a cheap step is timed over many). The first call
    of a training makes its optimiser and lays its tensors out: every training pays it once."""
    t0 = time.perf_counter()
    step_once()
    first = time.perf_counter() - t0
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < least or (time.perf_counter() - start < PRIMITIVE_SECONDS and len(times) < 200):
        t0 = time.perf_counter()
        step_once()
        times.append(time.perf_counter() - t0)
    each = statistics.median(times)
    return each, max(0.0, first - each)


def vector_student(recipe: Any, section: Any, emb: Any, needs: set[tuple[int, int]],
                   rows_scored: dict[tuple[int, int], int] | None = None) -> StudentCost:
    """Steps of K stacked students on B training rows for every (K, B) in ``needs``, and scoring (the real
    code of :func:`distillctl.evaluation.training.train_and_score`, on the real rows). ``rows_scored[(K, B)]``:
    the most rows a call of that (K, B) scores (default: the test split), for its peak after training."""
    import torch

    from distillctl.evaluation.protocol import split_of
    from distillctl.evaluation.training import (EVAL_STUDENT_ROWS, TrainBudget, _Batches, _Stacked, _TrainData,
                                                  student_builder)

    train, test = split_of(emb, "train"), split_of(emb, "test")
    X, y = train.X.float(), train.y.long()
    C, d = int(emb.num_classes), int(X.shape[1])
    build = student_builder(recipe, d, C, section)
    budget = TrainBudget.from_eval(recipe.eval)
    cost = StudentCost()
    x_test = test.X[:EVAL_STUDENT_ROWS].float()  # (m, d) at most one chunk of train_and_score's scoring
    for K, B in sorted(needs):
        # the chunk this (K, B) scores: validations score val (fewer rows, and scoring a Transformer costs ~0.35 s
        # per 7,600 rows, ~10 times a plan), stand-ins of the same width taken from test
        scored = min((rows_scored or {}).get((K, B), len(x_test)), len(x_test))
        x_scored = x_test[:scored]  # a view, no copy
        cost.scored_rows[(K, B)] = scored
        seeds = list(range(K))
        rows = torch.arange(min(B, len(y))) if B < budget.batch_size else torch.arange(len(y))
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            data = _TrainData.check(X[rows], y[rows], test.X[:1].float(), test.y[:1], seeds, C, None, None)
            students = _Stacked(build, seeds, data.x_train)
            batches = _Batches(data, budget.batch_size)
            built = time.perf_counter() - t0

            def once():
                xb, yb, x_dim = batches.next()
                students.step(xb, yb, x_dim, False, batches.B, budget)

            cost.step[(K, B)], first = _timed_steps(once)
            cost.setup[K] = min(cost.setup.get(K, math.inf), built + first)
            cost.peak[(K, B)] = mem.so_far()
            _score_first(students, x_scored)  # the K students and what training left are still held
        cost.scored_peak[(K, B)] = max(mem.extra, cost.peak[(K, B)])
        if not cost.peak[(K, B)]:  # no VmHWM to read inside the block: the block's peak bounds training's
            cost.peak[(K, B)] = mem.extra
        if not cost.row:  # scoring alone: one student on one chunk of test rows (the loop scores K one after another)
            m = min(PREDICT_ROWS, len(x_test))
            x_eval = x_test[:m]
            with PeakMemory() as mem:
                cost.row = _timed_steps(lambda: _score_first(students, x_eval))[0] / m
            cost.predict_peak, cost.predict_rows = mem.extra, m
        del students, batches, data
    return cost


def _score_first(students: Any, x: Any) -> Any:
    """The first of the stacked students' classes for the rows ``x`` (m, d), through the real ``predict``."""
    K, buffers = students.K, students.buffers
    students.K, students.buffers = 1, {k: v[:1] for k, v in buffers.items()}
    try:
        return students.predict([v[:1] for v in students.plist], x)
    finally:
        students.K, students.buffers = K, buffers


def held_bytes(student: Any) -> int:
    """Bytes a trained fine-tuned student (``finetuning._Student``) holds between its steps: all its weights, and
    for each trained one its gradient (kept from one step to the next: ``zero_grad`` frees it only before the
    next backward) and Adam's two moments (``full-earlystop`` holds K of these at once)."""
    trained = sum(p.numel() * p.element_size() for p in student.params)
    return sum(p.numel() * p.element_size() for p in student.module.parameters()) + 3 * trained


def token_student(recipe: Any, section: Any, emb: Any, needs: set[int], score_rows: bool = True) -> StudentCost:
    """One fine-tuned student (the real code of :mod:`distillctl.evaluation.finetuning`): building it, a step on
    B real training rows for every B in ``needs`` (batches cut after their last attended position, as
    training does), and scoring TOKEN_SCORE_ROWS test rows spread over the length distribution."""
    import torch

    from distillctl.evaluation.finetuning import DevicePlan, TokenData, _Student
    from distillctl.evaluation.protocol import split_of
    from distillctl.evaluation.training import TrainBudget, student_builder

    train, test = split_of(emb, "train"), split_of(emb, "test")
    data, y = TokenData.of_split(train), train.y.long()
    C, d = int(emb.num_classes), int(emb.dim)
    plan = DevicePlan.resolve(getattr(recipe.eval, "device", "auto"), field="eval.device",  # as token_arms does
                              precision=getattr(recipe.eval, "precision", "auto"))
    build = student_builder(recipe, d, C, section)
    cost = StudentCost()
    base = TrainBudget.from_eval(recipe.eval)
    for B in sorted(needs):
        budget = TrainBudget(**{**base.as_dict(), "batch_size": B})
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            student = _Student(build, 0, plan, budget, len(data))
            built = time.perf_counter() - t0
            # timed after each B's first step, which lays out a new student's optimiser state and creates the
            # kernels of a new batch shape (15-25 % over a steady step at B=32 here); the smallest B's first step
            # is every student's set-up
            cost.step[(1, B)], first = _timed_steps(lambda: student.step(data, y, False), least=1)  # ~0.3 s a step
            cost.setup.setdefault(1, built + first)
        cost.peak[(1, B)] = mem.extra
        if not cost.param_bytes:
            cost.param_bytes = sum(p.numel() * p.element_size() for p in student.params)
            cost.state_bytes = held_bytes(student)
        if score_rows and not cost.row:
            tdata = TokenData.of_split(test)
            order = torch.argsort(tdata.lengths())
            k = min(TOKEN_SCORE_ROWS, len(order))
            pick = order[torch.linspace(0, len(order) - 1, k).round().long()]
            sample = tdata.take(pick)
            with PeakMemory() as pm:
                student.predict(sample)  # cold: each batch length a new shape; an eval scores its test rows with
                t0 = time.perf_counter()  # every student, so all but the first find their kernels made
                student.predict(sample)
                cost.row = (time.perf_counter() - t0) / k
            cost.predict_peak = pm.extra
        del student
    return cost


def student_libraries(recipe: Any, emb: Any) -> int:
    """Bytes the libraries of the recipe's fine-tuned student add to a process (transformers and the model's
    code): one student built, less its weights (those are in each primitive's own peak)."""
    from distillctl.evaluation.training import student_builder

    with PeakMemory() as mem:
        module = student_builder(recipe, int(emb.dim), int(emb.num_classes), recipe.student)()
        weights = sum(p.numel() * p.element_size() for p in module.parameters())
        del module
    return max(0, mem.extra - weights)


# -- the rest -------------------------------------------------------------------------------------------

def logreg(emb: Any) -> tuple[float, int, int, float]:
    """(seconds, extra bytes, rows fitted, upper bound in seconds) of ``full``'s logistic regression, fitted on
    LOGREG_FRACTION of the training rows and scaled to all of them (see LOGREG_EXPONENT; memory: linear in the
    rows). The bound: every C of the grid at LOGREG_MAX_ITER lbfgs iterations, each as long as the measured
    ones were, times the rows (an iteration's products are linear in them). lbfgs stops there whatever the
    vectors, which is what a forecast made on stand-in vectors can promise (benchmarks/logreg_stand_ins.py)."""
    import torch

    from distillctl.evaluation.baselines import LOGREG_MAX_ITER, logreg_reference
    from distillctl.evaluation.protocol import split_of

    train, val, test = split_of(emb, "train"), split_of(emb, "val"), split_of(emb, "test")
    n = len(train.y)
    k = min(n, max(LOGREG_MIN_ROWS, int(n * LOGREG_FRACTION)))
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k]
    with PeakMemory() as lib:  # scikit-learn's import: the job pays it once, whatever the rows
        t0 = time.perf_counter()
        import sklearn.linear_model  # noqa: F401

        t_import = time.perf_counter() - t0
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        fit = logreg_reference(train.X[idx].float(), train.y[idx], val.X.float(), val.y, test.X.float(), test.y,
                               int(emb.num_classes))
        seconds = time.perf_counter() - t0
    held = (len(val.y) + len(test.y)) * int(train.X.shape[1]) * 8  # float64 copies of val and test
    per_row = max(0, mem.extra - held) / k
    forecast = t_import + seconds * (n / k) ** LOGREG_EXPONENT
    grid = fit["val_by_C"]
    per_iteration = seconds / max(1, sum(c["iterations"] for c in grid))  # on k rows
    upper = t_import + per_iteration * (n / k) * LOGREG_MAX_ITER * len(grid)
    return forecast, int(lib.extra + held + per_row * n), k, max(upper, forecast)


def coreset_cost(emb: Any, kind: str, ipc: int) -> tuple[float, int]:
    """(seconds, bytes on top of the loaded rows) to choose ``ipc`` rows per class by ``kind`` (herding, kcenter) on
    the training vectors: both hold a float64 copy of a class's rows; k-center's passes also make temporaries of that
    size (herding's are vectors of one value per row)."""
    from distillctl.evaluation.protocol import split_of
    from distillctl.evaluation.subsets import coreset

    train = split_of(emb, "train")
    X, y = train.X.float(), train.y.long()  # as the baseline holds them
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        coreset(X, y, int(emb.num_classes), ipc, kind)
        seconds = time.perf_counter() - t0
    return seconds, mem.extra


def chain_sets(run: Path, chain: Sequence[int]) -> list[int]:
    """Give the one-stage run ``run`` a set for every other stage of ``chain`` (its first ``ipc * C`` rows), as a
    whole run has them: the report draws a PCA panel of every set with a numbered label per row and reads each
    one out, and a 5-stage report took 5.4 s where its last stage's alone was forecast at 3.6 s. Returns the
    stages added."""
    from distillctl.distillation.synthetic import SyntheticSet
    from distillctl.evaluation.protocol import set_files
    from distillctl.runs import open_run_dir, record_set

    files = set_files(run)
    if not files:
        return []
    last = SyntheticSet.load(files[-1])
    added = []
    for ipc in sorted(i for i in set(chain) if i < last.ipc):
        path = run / "distilled" / f"ipc{ipc}.safetensors"  # set_files' naming
        if path.exists():
            continue
        n = ipc * last.num_classes  # rows
        cut = (lambda t: None if t is None else t[:n].clone())  # noqa: E731
        part = dataclasses.replace(last, x=cut(last.x), labels=cut(last.labels), ipc=ipc, mask=cut(last.mask),
                                   attention_labels=cut(last.attention_labels),
                                   meta={k: v for k, v in last.meta.items() if k != "sha256"})
        record_set(open_run_dir(run), part.save(path), part.sha256)
        added.append(ipc)
    return added


def measure_report(recipe: Any, run: Path | None, emb: Any, row_seconds: float = 0.0) -> tuple[float, int]:
    """(seconds, extra bytes) of the real report of the last measured stage's run, after results to report were
    put in it: a set for each stage of the chain (:func:`chain_sets`), the majority arm, and (vectors) the sets
    scored by one student trained one step, on FEW_ROWS test rows. At the token level
    the readout's nearest real texts are searched among REPORT_REAL_ROWS training texts instead of up to
    ``readable.MAX_REAL``: the others are forecast at ``row_seconds`` each (the student's scoring cost)."""
    import copy

    from distillctl.evaluation.baselines import baseline
    from distillctl.evaluation.evaluate import evaluate
    from distillctl.evaluation.protocol import split_of
    from distillctl.reporting.readable import MAX_REAL
    from distillctl.reporting.report import report
    from distillctl.runs import open_run_dir

    if run is None or not (run / "recipe.resolved.yaml").exists():
        return 0.0, 0
    stored = open_run_dir(run).load_recipe()
    chain_sets(run, list(recipe.distill.ipc))
    baseline(stored, "majority", embeddings=emb, quiet=True, run_dir=run)
    extra_rows = 0
    if _level(recipe) != "tokens":  # a fine-tuned student would score every test text: not for a plan
        evaluate(run, seeds=1, embeddings=few_rows(emb, "test"), quiet=True)  # scores to report: not timed
        shown = emb
    else:
        train = split_of(emb, "train")
        n = len(train.y)
        k = min(n, REPORT_REAL_ROWS)
        extra_rows = min(n, MAX_REAL) - k
        shown = copy.copy(emb)
        pick = lambda t: None if t is None else t[:k]  # noqa: E731
        shown.splits = {**emb.splits, "train": _Split(pick(train.X), train.y[:k], pick(train.ids), pick(train.mask),
                                                      pick(getattr(train, "type_ids", None)))}
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        report(run, quiet=True, embeddings=shown)
        seconds = time.perf_counter() - t0
    if extra_rows:  # the readout's own cost per real text: it runs in float32, eval's scoring may use bfloat16
        try:
            read = json.loads((run / "report.json").read_text()).get("readout") or []
            timed = [(r["real_seconds"], r["real_rows_searched"]) for r in read
                     if r.get("real_seconds") and r.get("real_rows_searched")]
            if timed:
                row_seconds = max(t / n for t, n in timed)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # keep the eval's scoring cost per row
    return seconds + extra_rows * row_seconds, mem.extra
