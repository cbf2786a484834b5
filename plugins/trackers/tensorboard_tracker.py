"""The ``tensorboard`` tracker: TensorBoard event files (``torch.utils.tensorboard.SummaryWriter``).

Every metrics.jsonl record becomes scalars at its outer step (``ipc5/loss``, ``ipc5/val_accuracy``), eval and
baseline results scalars at step 0, the report's plots images and report.md text. Default folder:
``RUN/tensorboard`` (every stage and job of a run writes its own event file there), so
``tensorboard --logdir runs/<recipe>`` shows every run of a recipe and ``--logdir SUBMISSION`` every point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field

from distillctl.options import PluginOptions
from distillctl.tracking import TrackedRun, Tracker
from distillctl_plugins.trackers.mlflow_tracker import require


class TensorBoardOptions(PluginOptions):
    logdir: Optional[str] = Field(
        None, description="Folder of the event files; null = RUN/tensorboard (a set file outside a run: "
        "<runs_dir>/<recipe name>/tensorboard). A relative path is taken from the run directory.")
    flush_seconds: float = Field(10.0, gt=0, description="Seconds between writes of the event file to disk.")
    images: bool = Field(True, description="Add the report's plots (plots/*.png) as images.")


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, options: TensorBoardOptions | None = None):
        super().__init__(options or TensorBoardOptions())
        require("tensorboard", "tensorboard")
        self.writer = None
        self.logdir: Path | None = None

    def start(self, run: TrackedRun) -> None:
        from torch.utils.tensorboard import SummaryWriter

        base = Path(run.run_dir) if run.run_dir is not None else \
            Path(run.params.get("runs_dir", "runs")).resolve() / run.experiment
        logdir = Path(self.options.logdir).expanduser() if self.options.logdir else Path("tensorboard")
        self.logdir = logdir if logdir.is_absolute() else base / logdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.logdir), flush_secs=self.options.flush_seconds,
                                    filename_suffix=f".{run.stage}")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, int(step))

    def log_artifacts(self, paths: list[Path], run_dir: Path | None) -> None:
        for p in paths:
            p = Path(p)
            tag = p.name
            if run_dir is not None:
                try:
                    tag = p.resolve().relative_to(Path(run_dir).resolve()).as_posix()
                except ValueError:
                    pass
            if p.suffix == ".png" and self.options.images:
                import matplotlib.image as mpimg

                img = mpimg.imread(str(p))  # (H, W, 3 or 4) floats in [0, 1]
                self.writer.add_image(tag, img[..., :3], 0, dataformats="HWC")
            elif p.suffix == ".md":
                self.writer.add_text(tag, p.read_text(encoding="utf-8"), 0)
        self.writer.flush()

    def finish(self, status: str) -> None:
        if self.writer is not None:
            self.writer.add_text("status", status, 0)
            self.writer.close()
