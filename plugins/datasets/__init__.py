"""Built-in dataset plugins: ``agnews``, ``mrpc``, ``local`` (CSV/TSV/JSONL/JSON/Parquet) and ``hf``.

Each factory returns a :class:`distillctl.textdata.DatasetSource`. Modules beside this one hold the
implementations; they import only pydantic and numpy at module level (pandas / datasets on use).
"""

from distillctl import hookimpl


@hookimpl
def register_datasets(register):
    from distillctl_plugins.datasets import agnews, hf, local, mrpc

    register("agnews", agnews.build, options=agnews.AGNewsOptions,
             description="AG News topics (4 classes): original CSV, 12k TAB subset, NoisyAG CSV, bundled sample, hub")
    register("mrpc", mrpc.build, options=mrpc.MRPCOptions,
             description="MRPC paraphrase pairs: GLUE train/dev + labelled MSR test (files or hub)")
    register("local", local.build, options=local.LocalOptions,
             description="Any CSV / TSV / JSONL / JSON / Parquet files with a column mapping")
    register("hf", hf.build, options=hf.HFOptions,
             description="Any Hugging Face dataset by name, config and column mapping")
