"""Hook specifications: the one place that says what a distillctl plugin can provide.

Every hook receives a ``register`` callback and calls it once per component it provides::

    register(name, factory, *, options=MyOptions, description="one line")

``name`` is what recipes use (``student: {name: mlp, ...}``) and must be unique within its kind (a
name two installed packages register fails only the commands that use it, naming both packages);
``options`` is a :class:`distillctl.options.PluginOptions` subclass validating the rest of the recipe
section (``distillctl plugins show NAME`` prints it); ``factory`` builds the component from validated
options. What a factory returns must subclass the base class named in each hook below and implement
its required members; the optional ones have working defaults there (:mod:`distillctl.contracts`
holds the table, and a test keeps these docstrings in step with it).

Errors meant for the user (a missing file, an option that cannot work with this data) are
:class:`distillctl.UserError`: the command exits 2 with that one line. Any other exception raised by
a plugin is a failed run (exit 1, "run failed: ...", traceback with ``--debug``).

Plugins are found through the entry-point group ``distillctl``; the built-in ones register the
same way as any third-party package. ``docs/plugins.md`` has a complete package for every kind.
"""

import pluggy

hookspec = pluggy.HookspecMarker("distillctl")


@hookspec
def register_datasets(register):
    """Register labelled text datasets.

    ``factory(options) -> distillctl.textdata.DatasetSource``. Required: ``identity()`` (JSON-able,
    cheap: file checksums or a hub fingerprint; it keys the embedding cache) and ``load(*, bad_rows)``
    returning a ``distillctl.textdata.TextDataset`` (splits ``train`` and ``test``, ``val`` optional, of
    texts or text pairs with integer labels, and the label names). Optional: ``describe()`` (one line
    for humans; default the plugin name) and ``name`` (set to the plugin name).
    """


@hookspec
def register_encoders(register):
    """Register frozen text encoders.

    ``factory(options) -> distillctl.encoding.Encoder``. Required: ``identity()`` (weights checksum or
    revision, pooling, every setting that changes the vectors; called before ``load``), ``dim`` (width
    of one text's vector, read after ``load``) and ``encode(texts, pairs, *, batch_size, progress)`` ->
    float32 ``numpy.ndarray`` of shape (n, dim), or (n, 4 * dim) for pairs in ``features`` mode.
    Optional: ``load(device)`` (called once before ``encode``; default: nothing to load),
    ``describe()`` (default the plugin name), ``pair_mode`` (``features`` = [u, v, abs(u - v), u * v],
    the default, or ``joint``), ``name`` (set to the plugin name), ``max_tokens`` (tokens read per text,
    known after ``load``; default None: the embed stage then passes texts whole, else it cuts them to
    ``distillctl.encoding.char_budget(max_tokens)`` characters first), ``count_tokens(text)`` (tokens of a
    text without special tokens, default None: with it a cut text is checked to still fill ``max_tokens``)
    and ``dim_from_config()`` (``dim`` read from the model's files without loading it, default None: with it
    ``distillctl plan`` on a missing cache measures on stand-ins of that width while the encoder loads).
    """


@hookspec
def register_students(register):
    """Register student networks trained on distilled sets.

    ``factory(input_dim, num_classes, options) -> torch.nn.Module`` (see
    ``distillctl.students.Student``). Required: ``forward(x)`` mapping ``(batch, input_dim)`` float
    vectors to ``(batch, num_classes)`` logits. Optional: ``features(x)`` -> ``(batch, h)``, the
    penultimate representation, such that the student's final layer applied to it gives the logits
    (the ``krr`` and ``dm`` methods with ``features: student`` need it). Modules are used functionally
    (``torch.func.functional_call``) so populations can be trained with ``torch.func.vmap``: no
    in-place buffer updates, no batch norm.
    """


@hookspec
def register_methods(register):
    """Register distillation methods (how one outer step gets its loss and meta-gradient).

    ``factory(options) -> distillctl.methods.Method``. Required: ``step(learn, real_x, real_y,
    generator)`` -> ``distillctl.methods.OuterStep`` (the outer loss and its gradient for every
    learnable tensor) once per outer step. Optional: ``setup(context)`` once per Boost-DD stage with a
    ``distillctl.methods.MethodContext`` (default: keeps it as ``self.context``),
    ``learned_inner_lr(inner)`` -> the start of a learned inner lr or None (default: ``inner.lr`` when
    ``distill.inner.learn_lr``, else None; it is called after ``setup``), ``state_dict()`` /
    ``load_state_dict(state)`` for whatever must survive ``--resume`` (default: no state) and ``name``
    (set to the plugin name).
    """


@hookspec
def register_unroll_strategies(register):
    """Register unroll strategies for the bilevel (meta-gradient) computation of the ``bptt`` method.

    ``factory(options) -> distillctl.unrolling.UnrollStrategy``. Required: ``plan(generator)`` ->
    ``(free_steps, graph_steps)``: how many inner steps run without a graph, then how many are
    differentiated, drawing any randomness from the ``torch.Generator``. Optional:
    ``meta_gradient(problem, learnables, real_x, real_y, generator)`` -> ``distillctl.unrolling.MetaStep``
    (default: runs ``plan`` then ``distillctl.unrolling.unroll``; override it to differentiate another
    way, e.g. implicitly, and ``plan`` is then not needed) and ``name`` (set to the plugin name).
    """


@hookspec
def register_schedulers(register):
    """Register job schedulers that run a graph of distillctl command lines.

    ``factory(options) -> distillctl.scheduling.Scheduler``. Required: ``submit(jobs, folder)`` ->
    one ``distillctl.scheduling.JobHandle`` per ``Job`` (jobs carry their dependencies; ``folder`` is
    the scheduler's own state folder), ``status(handles)`` -> fresh handles in the same order and
    ``cancel(handles)``. Optional: ``preflight()`` (check before anything is written; default: nothing),
    ``describe(jobs, folder)`` (the ``submit --dry-run`` text; default: each job with its command
    line), ``logs(handle)`` and ``log_files(handle)`` (default: the job's ``handle.log``), ``name``
    (set to the plugin name), ``options`` (the validated options; default ``None``) and
    ``poll_seconds`` (seconds between polls of ``submit --wait``; default 5).
    """


@hookspec
def register_trackers(register):
    """Register experiment trackers (MLflow, TensorBoard, ...) that a recipe's ``tracking`` list names.

    ``factory(options) -> distillctl.tracking.Tracker``. Required: ``start(run)`` (once per stage, with a
    ``distillctl.tracking.TrackedRun``: experiment, run name, flattened recipe params, fingerprint tags, run
    directory) and ``log_metrics(metrics, step)`` (numbers of one metrics.jsonl record or of the results).
    Optional: ``log_artifacts(paths, run_dir)`` (sets, results, report, plots; default: nothing),
    ``finish(status)`` (``FINISHED`` or ``FAILED``; default: nothing), ``submission(experiment, name, points)``
    -> ``{point name: {ENV_VAR: value}}`` for the jobs of ``submit`` (default ``{}``), ``name`` (set to the
    plugin name) and ``options`` (the validated options; default ``None``). Every method but ``submission``
    runs on a background thread; an exception there is one warning and the run goes on without the tracker.
    """
