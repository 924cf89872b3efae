"""Typed errors of the pipeline layer; the CLI turns them into `Error: ...` and exit 1."""


class PipelineError(Exception):
    """A user-facing failure: the message says what happened, to which input, and what to do."""


class ConfigError(PipelineError):
    """A config file or flag value is invalid (unknown key, wrong type, bad value)."""


class WeightsError(PipelineError):
    """Backbone weights could not be resolved or loaded."""


class ImageError(PipelineError):
    """One image could not be read or decoded; in a batch this becomes a report row."""


class LabelsError(PipelineError):
    """A labels CSV is malformed; the message names the file and line."""


class CheckpointError(PipelineError):
    """A checkpoint is missing, malformed, unsafe, or does not match the store namespace."""


class PipelineWarning(UserWarning):
    """Something the user should know that does not stop the run; the CLI prints it as one
    `warning: ...` line on stderr."""
