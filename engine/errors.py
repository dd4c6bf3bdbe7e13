"""Typed errors a user can cause. Each message is a sentence a person can act on."""


class EngineError(Exception):
    """Base class: the message is meant to be shown to the user as is."""


class ModelLoadError(EngineError):
    """A model path, file or component could not be loaded."""


class InputError(EngineError):
    """A request is malformed: wrong image size, mismatched mask, bad parameter."""


class OutOfMemoryError(EngineError):
    """The device ran out of memory; the engine stays usable."""


class FileError(InputError):
    """A file could not be read or written: missing, damaged, too large, wrong size."""


class NonFiniteError(EngineError):
    """A model produced NaN or inf values (typically fp16 overflow)."""
