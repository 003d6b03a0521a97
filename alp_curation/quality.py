"""How good are the ALPs? Compare them with ground-truth boxes of the objects the phrases name.

A ground-truth mention is a span of the caption that names one object, with that object's box. An
ALP answers a mention when their caption spans overlap; the score is the IoU of the two boxes. Two
figures summarise a set: the mean IoU over answered mentions, and the fraction of mentions answered
(a mention whose phrase was dropped, untimed or had no trace points counts as missed).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from alp_curation.boxes import box_iou_xyxy
from alp_curation.curate import Alp


@dataclass(frozen=True)
class Mention:
    """A caption span that names one object, and that object's box."""

    start_char: int
    end_char: int
    box_xyxy_norm: tuple[float, float, float, float]
    label: str = ""


@dataclass(frozen=True)
class MentionMatch:
    mention: Mention
    alp: Alp | None  # the ALP whose span overlaps the mention most, if any
    iou: float  # 0.0 when no ALP answers the mention


def match_mentions(alps: Sequence[Alp], mentions: Sequence[Mention]) -> list[MentionMatch]:
    """Pair each mention of one narrative with the ALP that overlaps its caption span most."""
    matches = []
    for mention in mentions:
        best, best_overlap = None, 0
        for alp in alps:
            overlap = min(alp.end_char, mention.end_char) - max(alp.start_char, mention.start_char)
            if overlap > best_overlap:
                best, best_overlap = alp, overlap
        iou = 0.0
        if best is not None:
            iou = float(
                box_iou_xyxy(
                    np.asarray([best.box_xyxy_norm], dtype=np.float64),
                    np.asarray([mention.box_xyxy_norm], dtype=np.float64),
                )[0, 0]
            )
        matches.append(MentionMatch(mention, best, iou))
    return matches


@dataclass(frozen=True)
class QualitySummary:
    n_mentions: int
    n_answered: int
    mean_iou: float  # over answered mentions; nan when none
    iou_at_50: float  # fraction of answered mentions with IoU >= 0.5; nan when none

    @property
    def answered_fraction(self) -> float:
        return self.n_answered / self.n_mentions if self.n_mentions else float("nan")


def summarise(matches: Iterable[MentionMatch]) -> QualitySummary:
    matches = list(matches)
    ious = np.asarray([m.iou for m in matches if m.alp is not None], dtype=np.float64)
    answered = len(ious)
    return QualitySummary(
        n_mentions=len(matches),
        n_answered=answered,
        mean_iou=float(ious.mean()) if answered else float("nan"),
        iou_at_50=float((ious >= 0.5).mean()) if answered else float("nan"),
    )
