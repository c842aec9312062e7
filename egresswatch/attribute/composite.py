"""Several attributors asked in turn: the first that names a process answers.

Replay combines them this way (ptcpdump comments, then a recorded lookup
file); :class:`CompositeAttributor` is itself an Attributor.
"""

from __future__ import annotations

from collections.abc import Sequence

from egresswatch.model import UNKNOWN, Attribution, Frame, Observation
from egresswatch.stages import Attributor


class CompositeAttributor:
    """The first attribution that names a process; else the last answer
    (or UNKNOWN when there are no attributors)."""

    def __init__(self, attributors: Sequence[Attributor]) -> None:
        self.attributors = list(attributors)

    def attribute(self, obs: Observation, frame: Frame) -> Attribution:
        last = UNKNOWN
        for a in self.attributors:
            last = a.attribute(obs, frame)
            if last.process is not None:
                return last
        return last
