"""What every job this package launches (``python -m pipeline``, ``python -m pipeline.compare``)
sets on Beam's options before it starts."""
from __future__ import annotations

import os

from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

REPO_SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "setup.py")


class UsageError(ValueError):
    """A bad option or argument: the message says what to do (exit 2, before any work)."""


def runner_name(pipeline_options: PipelineOptions) -> str:
    return pipeline_options.view_as(StandardOptions).runner or "DirectRunner"


def ship_package(pipeline_options: PipelineOptions) -> None:
    """On Dataflow, ship this package to the workers: ``--setup_file`` defaults to this
    repository's setup.py."""
    setup = pipeline_options.view_as(SetupOptions)
    if "Dataflow" in runner_name(pipeline_options) and not setup.setup_file:
        setup.setup_file = REPO_SETUP
