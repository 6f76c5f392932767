"""The one error type of the pretrained-weight import."""


class PretrainedError(ValueError):
    """A model name, folder, config or weight file that cannot be imported."""
