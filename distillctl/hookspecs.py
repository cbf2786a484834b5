"""Hook specifications: the one place that says what a distillctl plugin can provide.

Every hook receives a ``register`` callback and calls it once per component it provides::

    register(name, factory, *, options=MyOptions, description="one line")

``name`` is what recipes use (``student: {name: mlp, ...}``) and must be unique within its kind;
``options`` is a :class:`distillctl.options.PluginOptions` subclass validating the rest of the
recipe section; ``factory`` builds the component from validated options (signatures below).
Plugins are found through the entry-point group ``distillctl``; the built-in ones register the
same way as any third-party package.
"""

import pluggy

hookspec = pluggy.HookspecMarker("distillctl")


@hookspec
def register_datasets(register):
    """Register labelled text datasets.

    ``factory(options) -> distillctl.textdata.DatasetSource``: an object with ``identity() -> dict``
    (JSON-able, cheap: file checksums or a hub fingerprint; it keys the embedding cache) and
    ``load() -> distillctl.textdata.TextDataset`` (named splits ``train`` / ``val`` / ``test`` of texts or
    text pairs with integer labels, and the label names).
    """


@hookspec
def register_encoders(register):
    """Register frozen text encoders.

    ``factory(options) -> distillctl.encoding.Encoder``: an object with ``identity() -> dict``
    (weights checksum or revision, pooling, pair mode, ...), ``dim`` (output width, available after
    ``load()``) and ``encode(texts, pairs=None, *, batch_size, progress) -> numpy.ndarray[n, dim]``.
    """


@hookspec
def register_students(register):
    """Register student networks trained on distilled sets.

    ``factory(input_dim, num_classes, options) -> torch.nn.Module`` mapping ``(batch, input_dim)``
    float vectors to ``(batch, num_classes)`` logits. Modules are used functionally
    (``torch.func.functional_call``) so populations can be trained with ``torch.func.vmap``:
    no in-place buffers, no batch norm.
    """


@hookspec
def register_unroll_strategies(register):
    """Register unroll strategies for the bilevel (meta-gradient) computation.

    ``factory(options) -> distillctl.unrolling.UnrollStrategy``: given the student, the learnable
    synthetic tensors, the inner-optimiser settings, a real batch and a ``torch.Generator``, it
    returns the outer loss and its gradient with respect to the learnable tensors.
    """


@hookspec
def register_schedulers(register):
    """Register job schedulers that run a graph of distillctl command lines.

    ``factory(options) -> distillctl.scheduling.Scheduler``: an object with ``submit(jobs) ->
    handles`` (jobs carry their dependencies), ``status(handle)``, ``cancel(handle)`` and
    ``logs(handle)``.
    """
