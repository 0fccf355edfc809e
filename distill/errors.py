"""Errors for bad configuration or input: each names the key, file or path at fault.

All derive from :class:`ConfigError`, which ``tools/*.py`` report as one line (no traceback);
each also derives from the matching builtin, so ``except KeyError`` etc. keep working.
"""


class ConfigError(Exception):
    """A config key, file or input that cannot work; the message says which and why."""

    def __str__(self) -> str:  # KeyError subclasses would print the message in quotes
        return str(self.args[0]) if self.args else ""


class ConfigValueError(ConfigError, ValueError):
    """A config value is empty, inconsistent or unsupported."""


class ConfigKeyError(ConfigError, KeyError):
    """A name (distiller, adapter, module path, feature level) that does not exist."""


class MissingFileError(ConfigError, FileNotFoundError):
    """A file or directory named by the config does not exist (nothing is downloaded)."""


class InvalidDataError(ConfigValueError):
    """Dataset content (annotation, image) that cannot be used as it is: the message names the
    file, the image id and the annotation id or field."""

    def __str__(self) -> str:
        # A data-loader worker's error comes back with the worker's traceback as its message,
        # ending with "...InvalidDataError: <message>": keep that message (args keep it all).
        text = super().__str__()
        if text.startswith(f"Caught {type(self).__name__} in DataLoader worker"):
            return text.rstrip().rsplit(f"{type(self).__name__}: ", 1)[-1]
        return text


class DivergenceError(ConfigError, FloatingPointError):
    """Training produced a non-finite loss, gradient or weight: the message names the iteration
    and the losses or parameters (usually the learning rate is too high for the model)."""


class BrokenTeacherError(DivergenceError):
    """Distillation losses dwarfed the student's own losses for many iterations in a row (a
    collapsed or wrongly scaled teacher): the message names the iteration, the losses, the
    teacher and the ``DISTILL.LOSS_RATIO_STOP`` keys."""


def run_cli(main, *args):
    """Run a tool's ``main``; a :class:`ConfigError` ends it with one ``error: ...`` line."""
    try:
        return main(*args)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
