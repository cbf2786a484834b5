"""Built-in experiment trackers: ``mlflow`` (the real MLflow client) and ``tensorboard`` (event files).

Both need an optional extra (``pip install 'distillctl[mlflow]'`` / ``'distillctl[tensorboard]'``); a recipe
that names one without its package fails before anything runs (exit 2, naming the pip command). Each tracker
class is its own factory. The packages are imported when a tracker starts, so loading the registry stays cheap.
"""

from distillctl import hookimpl
from distillctl_plugins.trackers.mlflow_tracker import MlflowOptions, MlflowTracker
from distillctl_plugins.trackers.tensorboard_tracker import TensorBoardOptions, TensorBoardTracker


@hookimpl
def register_trackers(register):
    register("mlflow", MlflowTracker, options=MlflowOptions,
             description="MLflow: one run per distill / eval / baseline (params, fingerprint tags, metrics by step, "
             "sets, report and plots); a sweep is a parent run with a child per point")
    register("tensorboard", TensorBoardTracker, options=TensorBoardOptions,
             description="TensorBoard event files (scalars per step, the plots as images) under RUN/tensorboard")
