"""What every job this package launches (``python -m pipeline``, ``python -m pipeline.compare``)
shares before it starts: the usage error and the Beam options it sets.

Beam is imported inside the functions, so a command's ``--help`` does not load it.
"""

from __future__ import annotations

import os

REPO_SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")


class UsageError(ValueError):
    """A bad option or argument: the message says what to do (exit 2, before any work)."""


def runner_name(pipeline_options) -> str:
    from apache_beam.options.pipeline_options import StandardOptions

    return pipeline_options.view_as(StandardOptions).runner or "DirectRunner"


def ship_package(pipeline_options) -> None:
    """On Dataflow, ship this package to the workers: ``--setup_file`` defaults to this
    repository's setup.py."""
    from apache_beam.options.pipeline_options import SetupOptions

    setup = pipeline_options.view_as(SetupOptions)
    if "Dataflow" in runner_name(pipeline_options) and not setup.setup_file:
        setup.setup_file = REPO_SETUP
