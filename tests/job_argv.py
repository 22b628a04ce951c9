"""The three options every `python -m pipeline` run in the tests passes, in one place."""


def job_argv(pattern, output_dir, model) -> list[str]:
    """``--input_pattern``, ``--output_dir`` and ``--model`` as command-line arguments."""
    return ["--input_pattern", str(pattern), "--output_dir", str(output_dir), "--model", str(model)]


# Dataflow's offline dry run: the job graph is built and validated, nothing is submitted
DATAFLOW_DRY_RUN = [
    "--runner",
    "DataflowRunner",
    "--dry_run",
    "True",
    "--project",
    "example-project",
    "--region",
    "us-central1",
    "--temp_location",
    "gs://no-such-bucket/tmp",
]
