"""Batches for training: a collate that keeps per-image targets, and a loader mixing two sources.

    coco = make_loader(CocoShardDataset(...), batch_size=8, num_workers=4)
    alps = make_loader(AlpShardDataset(..., epoch_length=50_000), batch_size=8, num_workers=4)
    for name, (images, targets) in MixedLoader(coco, alps, pattern=(1, 1), names=("coco", "alp"),
                                               batches_per_epoch=2_000):
        ...  # images: uint8 (B, 3, S, S); targets: list of B target dicts

The ALP paper trains FCOS-MO on COCO masks for base classes and on ALPs for novel ones; the two
datasets differ in size by orders of magnitude, so the mix is by batches in a fixed pattern, and
the smaller source simply starts its next epoch when it runs out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from alp_dataset.transforms import is_channels_last

__all__ = ["MixedLoader", "collate", "make_loader"]

Batch = tuple[torch.Tensor, list[dict[str, Any]]]


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> Batch:
    """Stack the images (B, C, H, W); keep the targets as a list, one dict per image.

    Targets hold per-image variable-length instances (N differs between images), so they are never
    stacked. The images must share one size, which `TrainTransform` and `EvalTransform` give.

    Each per-instance tensor of the targets becomes a view into one tensor per key for the whole
    batch: a batch leaving a DataLoader worker then costs one shared-memory handle per key
    rather than one per tensor, each of which is a socket round trip (about 1 ms; with masks,
    boxes, ids and flags that was most of the loader's time on two workers).
    """
    if not batch:
        raise ValueError("collate: empty batch")
    images = [image for image, _ in batch]
    shapes = sorted({tuple(image.shape) for image in images})
    if len(shapes) > 1:
        raise ValueError(
            f"collate: images of one batch differ in shape {shapes}; use a transform with a "
            "fixed output size (TrainTransform, EvalTransform)"
        )
    targets = [dict(target) for _, target in batch]
    for key in targets[0]:
        values = [t.get(key) for t in targets]
        if _packable(values):
            packed = torch.cat(values, out=_output_like(values, sum(len(v) for v in values)))
            for t, view in zip(targets, packed.split([len(v) for v in values]), strict=True):
                t[key] = view  # (N, ...) view of (sum of N, ...)
    return torch.stack(images, out=_output_like(images, len(images), stacked=True)), targets


def _output_like(values: Sequence[torch.Tensor], n: int, *, stacked: bool = False) -> torch.Tensor:
    """An empty (n, ...) tensor for the batch; in shared memory inside a DataLoader worker, so
    that sending it to the training process copies nothing more (as torch's default_collate)."""
    first = values[0]
    shape = (n, *first.shape) if stacked else (n, *first.shape[1:])
    # Channels-last images (the transforms keep the decoder's pixel-by-pixel layout) stack into
    # a channels-last batch: no transposing copy here, and convolutions accept either layout.
    channels_last = stacked and is_channels_last(first)
    if get_worker_info() is None:
        out = first.new_empty(shape)
    else:
        storage = first._typed_storage()._new_shared(math.prod(shape), device=first.device)
        out = first.new(storage).resize_(shape)
    if channels_last:
        # (B, C, H, W) viewed over (B, H, W, C) storage
        out = out.view(n, shape[2], shape[3], shape[1]).permute(0, 3, 1, 2)
    return out


def _packable(values: Sequence[Any]) -> bool:
    """Tensors of one dtype and one shape but for dim 0 (per-instance values of each image)."""
    if not all(isinstance(v, torch.Tensor) and v.ndim >= 1 for v in values):
        return False
    first = values[0]
    return all(v.dtype == first.dtype and v.shape[1:] == first.shape[1:] for v in values)


def make_loader(
    dataset: Dataset[Any] | IterableDataset[Any],
    *,
    batch_size: int,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
    persistent_workers: bool = False,
    multiprocessing_context: Any = None,
) -> DataLoader[Any]:
    """A DataLoader with `collate`. With an iterable dataset each worker batches its own samples,
    so every worker's last batch of an epoch may be short unless ``drop_last``."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=persistent_workers and num_workers > 0,
        multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
    )


class MixedLoader:
    """Alternate batches of two loaders: ``pattern[0]`` from the first, then ``pattern[1]`` from
    the second, and again; yields ``(name, batch)``.

    A loader that runs out starts its next epoch at once (``set_epoch(e + 1)`` on its dataset,
    when the dataset has it), so the mix never stops for the smaller source. With
    ``batches_per_epoch`` an iteration of the MixedLoader yields exactly that many batches and
    the next iteration continues where it stopped; with None it never ends.

    Raises RuntimeError when a loader yields no batch in a whole epoch (it would loop forever).
    """

    def __init__(
        self,
        loader_a: Iterable[Any],
        loader_b: Iterable[Any],
        *,
        pattern: tuple[int, int] = (1, 1),
        names: tuple[str, str] = ("a", "b"),
        batches_per_epoch: int | None = None,
    ) -> None:
        if len(pattern) != 2 or min(pattern) < 0 or sum(pattern) == 0:
            raise ValueError(f"pattern must be two counts >= 0, not both 0; got {pattern}")
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1 or None, got {batches_per_epoch}")
        self.loaders = (loader_a, loader_b)
        self.pattern = tuple(pattern)
        self.names = tuple(names)
        self.batches_per_epoch = batches_per_epoch
        datasets = [getattr(loader, "dataset", None) for loader in self.loaders]
        self.epochs = [int(getattr(d, "epoch", 0)) for d in datasets]
        self._iterators: list[Iterator[Any] | None] = [None, None]
        # One round of the pattern as loader indices; a position, not a generator, so that the
        # object holds no reference cycle and its loader workers stop as soon as it is dropped.
        self._round = [i for i, count in enumerate(self.pattern) for _ in range(count)]
        self._position = 0

    def __len__(self) -> int:
        if self.batches_per_epoch is None:
            raise TypeError("an endless MixedLoader (batches_per_epoch=None) has no length")
        return self.batches_per_epoch

    def close(self) -> None:
        """Drop the loaders' iterators, stopping their worker processes now."""
        self._iterators = [None, None]

    def _next_batch(self, i: int) -> Any:
        restarted = False
        while True:
            it = self._iterators[i]
            if it is None:
                it = self._iterators[i] = iter(self.loaders[i])
            try:
                return next(it)
            except StopIteration:
                if restarted:
                    raise RuntimeError(
                        f"MixedLoader: loader {self.names[i]!r} yielded no batch in a whole epoch"
                    ) from None
                restarted = True
                self.epochs[i] += 1
                dataset = getattr(self.loaders[i], "dataset", None)
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(self.epochs[i])
                self._iterators[i] = None

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        produced = 0
        while self.batches_per_epoch is None or produced < self.batches_per_epoch:
            i = self._round[self._position % len(self._round)]
            self._position += 1
            yield self.names[i], self._next_batch(i)
            produced += 1
