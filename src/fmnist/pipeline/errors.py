"""The error the pipeline reports to users as one line, without a traceback."""


class PipelineError(Exception):
    """A failure whose message tells the user what went wrong and what to do."""
