"""Built-in encoder plugins: ``sentence-transformers`` (any SentenceTransformer; the bundled
all-MiniLM-L6-v2 offline) and ``hf`` (transformers AutoModel with CLS / mean pooling).

Each factory returns a :class:`distillctl.encoding.Encoder`; torch / transformers load on use.
"""

from distillctl import hookimpl


@hookimpl
def register_encoders(register):
    from distillctl_plugins.encoders import hf, st

    register("sentence-transformers", st.build, options=st.STOptions,
             description="SentenceTransformer by hub id or folder; all-MiniLM-L6-v2 bundled (offline)")
    register("hf", hf.build, options=hf.HFEncoderOptions,
             description="transformers AutoModel with cls / mean pooling; pairs joint or [u, v, |u-v|, u*v]")
