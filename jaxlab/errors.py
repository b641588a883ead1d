"""User-facing errors: the CLI turns these into one line and exit status 2."""


class ConfigError(ValueError):
    """Bad user input (config, override, mesh, data, workdir): one sentence naming the value."""


class TrainingError(RuntimeError):
    """The run itself went wrong (e.g. a non-finite loss); the message names the step."""
