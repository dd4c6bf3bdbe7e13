"""Jobs: turn an ``EditRequest`` into algorithm inputs, run the algorithm, build the result.

A job runner is a generator ``run(ctx, request)`` that yields ``Progress`` and returns a
``JobResult``. Runners register themselves by method name with ``@job("name")``; adding an
algorithm is one module here plus one import line below.
"""

# importing registers the runners
from . import attention_edits, basic, edits  # noqa: E402,F401
from .base import JOB_RUNNERS, JobContext, JobResult, job

__all__ = ["JOB_RUNNERS", "JobContext", "JobResult", "job"]
