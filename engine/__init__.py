"""Diffusion Editor's engine: models, schedules, editing algorithms, the worker thread.

Qt-free by contract (tests/test_import_contract.py): the editor talks to it through
``Engine``, frozen ``EditRequest``s and the events in ``engine.types``.
"""

from . import offline  # noqa: F401  (first: the hub reads its offline switches at import)
from .engine import Engine
from .errors import EngineError, InputError, ModelLoadError, OutOfMemoryError
from .models import DEFAULT_MODEL, ModelBundle, load_model
from .types import (
    Cancelled,
    EditRequest,
    Event,
    Failed,
    Finished,
    LoadModelRequest,
    LoraRequest,
    LorasChanged,
    ModelInfo,
    ModelLoaded,
    Started,
    Step,
)

__all__ = [
    "DEFAULT_MODEL",
    "Cancelled",
    "EditRequest",
    "Engine",
    "EngineError",
    "Event",
    "Failed",
    "Finished",
    "InputError",
    "LoadModelRequest",
    "LoraRequest",
    "LorasChanged",
    "ModelBundle",
    "ModelInfo",
    "ModelLoaded",
    "ModelLoadError",
    "OutOfMemoryError",
    "Started",
    "Step",
    "load_model",
]
