"""The training engine: data sources and the resumable stream (``sources``, ``stream``),
distributed set-up (``distributed``), checkpoints (``checkpoint``), the optimiser and schedule
(``schedule``). The loop itself reads top to bottom in `models.train`.

Only the error type lives here, so that importing a part imports nothing else.
"""

from __future__ import annotations

__all__ = ["TrainError"]


class TrainError(ValueError):
    """Bad input to a training run; the message names the flag."""
