"""Built-in unroll strategies: ``full``, ``truncated`` and ``ratbptt`` (random truncated BPTT)."""

from __future__ import annotations

from pydantic import Field, model_validator

from distillctl import hookimpl
from distillctl.options import PluginOptions


class FullOptions(PluginOptions):
    total: int = Field(
        100, ge=1, description="Inner steps per outer step, all differentiated (memory grows with it). 100 was "
        "chosen on `val` (BENCHMARKS.md, AG News MLP ipc 1: 87.82 % against 87.77 % for 200 and 87.54 % for 1000)."
    )


class TruncatedOptions(PluginOptions):
    window: int = Field(40, ge=1, description="Last inner steps that are differentiated.")
    total: int = Field(100, ge=1, description="Inner steps per outer step; the first total - window run without a graph.")

    @model_validator(mode="after")
    def _window_fits(self):
        if self.window > self.total:
            raise ValueError(f"window ({self.window}) must be <= total ({self.total})")
        return self


class RatBPTTOptions(PluginOptions):
    window: int = Field(40, ge=1, description="Inner steps differentiated per outer step (memory follows this).")
    total: int = Field(
        100, ge=1, description="Horizon in inner steps: the window ends at most here (students see at most total steps)."
    )
    min_start: int = Field(0, ge=0, description="Earliest inner step at which the window may start.")

    @model_validator(mode="after")
    def _window_fits(self):
        if self.window > self.total:
            raise ValueError(f"window ({self.window}) must be <= total ({self.total})")
        if self.min_start > self.total - self.window:
            raise ValueError(f"min_start ({self.min_start}) must be <= total - window ({self.total - self.window})")
        return self


def _full(options):
    from distillctl.unrolling import FullUnroll

    return FullUnroll(options.total)


def _truncated(options):
    from distillctl.unrolling import TruncatedUnroll

    return TruncatedUnroll(options.window, options.total)


def _ratbptt(options):
    from distillctl.unrolling import RandomTruncatedUnroll

    return RandomTruncatedUnroll(options.window, options.total, options.min_start)


@hookimpl
def register_unroll_strategies(register):
    register("full", _full, options=FullOptions, description="Backpropagate through every inner step.")
    register("truncated", _truncated, options=TruncatedOptions,
             description="Backpropagate through the last `window` inner steps only.")
    register("ratbptt", _ratbptt, options=RatBPTTOptions,
             description="RaT-BPTT: a random window of inner steps; steps before it run without a graph.")
