"""The stream of batches, one per step, from one or two sources; resumable exactly.

    stream = DataStream(loaders, ["coco", "alp"], pattern=(1, 1))
    for name, (images, targets) in stream: ...
    state = stream.state_dict()             # goes into the checkpoint

Two sources alternate batches in ``pattern`` (`alp_dataset.loader.MixedLoader`; the ALP paper
alternates, Sec. 3.3). The datasets are deterministic given (seed, epoch, rank, worker), so the
stream is rebuilt at the epoch each source was in at the start of the current pattern round,
the batches that source had already given in that epoch are skipped (read and dropped), and the
batches of the round before the checkpoint are drawn again and dropped: steps after a resume see
the same batches as an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from torch.utils.data import DataLoader

from alp_dataset.loader import MixedLoader

__all__ = ["DataStream"]


class _SkipFirst:
    """A loader whose first iteration starts after ``skip`` batches (read and dropped)."""

    def __init__(self, loader: DataLoader[Any], skip: int) -> None:
        self.loader = loader
        self.dataset = loader.dataset  # MixedLoader sets epochs through it
        self.skip = skip

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        skip, self.skip = self.skip, 0
        for _ in range(skip):
            if next(it, None) is None:
                break
        return it


class DataStream:
    """Batches, one per step, from one loader or two mixed by ``pattern``; resumable exactly.

    ``state_dict()`` is the position after the batches yielded so far: each source's epoch and
    the batches it had given in that epoch at the start of the current pattern round, and the
    batches drawn since. A stream built with that state yields what the original would have
    yielded next (module doc). Batches are ``(source name, (images, targets))``.
    """

    def __init__(
        self,
        loaders: Sequence[DataLoader[Any]],
        names: Sequence[str],
        *,
        pattern: tuple[int, int] = (1, 1),
        state: Mapping[str, Any] | None = None,
    ) -> None:
        if not 1 <= len(loaders) <= 2 or len(names) != len(loaders):
            raise ValueError("DataStream: one or two loaders, one name each")
        self.loaders, self.names, self.pattern = list(loaders), list(names), tuple(pattern)
        n = len(loaders)
        self.round_length = sum(pattern) if n == 2 else 1
        state = state or {"epochs": [0] * n, "offsets": [0] * n, "position": 0}
        if len(state["epochs"]) != n or not 0 <= state["position"] < self.round_length:
            raise ValueError(f"DataStream: state {dict(state)} does not fit {n} source(s)")
        self.epochs = [int(e) for e in state["epochs"]]
        self.offsets = [int(o) for o in state["offsets"]]
        self._replay = int(state["position"])
        self._epoch_of = list(self.epochs)  # each source's epoch as its loader sees it
        self._round_start = (list(self.epochs), list(self.offsets))
        self._position = 0

    def state_dict(self) -> dict[str, Any]:
        epochs, offsets = self._round_start
        return {"epochs": list(epochs), "offsets": list(offsets), "position": self._position}

    def _single(self, loader: _SkipFirst) -> Iterator[tuple[int, Any]]:
        empty_epochs = 0
        while True:
            produced = False
            for batch in loader:
                produced = True
                yield 0, batch
            empty_epochs = 0 if produced else empty_epochs + 1
            if empty_epochs > 1:
                raise RuntimeError(f"source {self.names[0]!r} yielded no batch in a whole epoch")
            self._epoch_of[0] += 1
            loader.dataset.set_epoch(self._epoch_of[0])

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        for loader, epoch in zip(self.loaders, self.epochs, strict=True):
            loader.dataset.set_epoch(epoch)
        wrapped = [_SkipFirst(lo, off) for lo, off in zip(self.loaders, self.offsets, strict=True)]
        mixed: MixedLoader | None = None
        if len(wrapped) == 1:
            self._epoch_of = [self.epochs[0]]
            batches: Iterable[tuple[int, Any]] = self._single(wrapped[0])
        else:
            mixed = MixedLoader(*wrapped, pattern=self.pattern, names=tuple(self.names))
            self._epoch_of = mixed.epochs  # the mixer moves a source to its next epoch
            batches = ((self.names.index(name), batch) for name, batch in mixed)
        try:
            for i, batch in batches:
                if self._epoch_of[i] != self.epochs[i]:
                    self.epochs[i], self.offsets[i] = self._epoch_of[i], 1
                else:
                    self.offsets[i] += 1
                self._position += 1
                if self._position == self.round_length:
                    self._position = 0
                    self._round_start = (list(self.epochs), list(self.offsets))
                if self._replay:
                    self._replay -= 1  # given before the checkpoint
                    continue
                yield self.names[i], batch
        finally:
            if mixed is not None:
                mixed.close()
