"""Errors the pipeline reports to users as one line, without a traceback."""


class PipelineError(Exception):
    """A failure whose message tells the user what went wrong and what to do."""


class ParamsError(PipelineError):
    """params.yaml holds a key or value the pipeline cannot use."""
