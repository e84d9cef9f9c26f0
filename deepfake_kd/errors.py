"""Errors meant for a person: the CLI prints them as one line, the app as a gr.Error."""


class DeepfakeKDError(Exception):
    """Base of every error whose message alone tells the user what went wrong and what to do."""


class VideoError(DeepfakeKDError):
    """The upload is not a usable video: not a video, corrupt, empty, too large or too long."""


class ModelNotFoundError(DeepfakeKDError):
    """No model at a reference; the message lists what was tried."""


class WeightsError(DeepfakeKDError):
    """A weights folder that cannot be loaded as-is; the message names the file and the fix."""
