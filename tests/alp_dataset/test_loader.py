"""Tests for alp_dataset/loader.py: the collate, the mixing schedule, epochs of the smaller source,
and a mixed loader over two real shard datasets with DataLoader workers."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from alp_dataset.coco_shards import COCO_SHARDS_FORMAT, COCO_SHARDS_VERSION, encode_mask
from alp_dataset.datasets import AlpShardDataset, CocoShardDataset
from alp_dataset.loader import MixedLoader, collate, make_loader
from alp_dataset.schema import SCHEMA_VERSION, phrase_id
from alp_dataset.transforms import TrainTransform


def _sample(n: int, size: int = 8) -> tuple[torch.Tensor, dict[str, Any]]:
    return torch.zeros(3, size, size, dtype=torch.uint8), {"boxes_xyxy_px": torch.zeros(n, 4)}


def test_collate_stacks_images_and_keeps_targets_per_image() -> None:
    images, targets = collate([_sample(0), _sample(3), _sample(1)])
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.uint8
    assert [len(t["boxes_xyxy_px"]) for t in targets] == [0, 3, 1]
    # Views into one tensor for the batch: one shared-memory handle when leaving a worker.
    storages = {t["boxes_xyxy_px"].untyped_storage().data_ptr() for t in targets}
    assert len(storages) == 1
    with pytest.raises(ValueError, match="differ in shape"):
        collate([_sample(1, 8), _sample(1, 9)])
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


class FakeDataset:
    def __init__(self) -> None:
        self.epoch = 0
        self.epochs_set: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_set.append(epoch)


class FakeLoader:
    """Batches "<name><epoch>.<i>" for i < n; a new pass is a new epoch of its dataset."""

    def __init__(self, name: str, n: int) -> None:
        self.name, self.n, self.dataset = name, n, FakeDataset()

    def __iter__(self) -> Iterator[str]:
        return iter([f"{self.name}{self.dataset.epoch}.{i}" for i in range(self.n)])


def test_mixed_loader_follows_the_pattern_and_restarts_the_smaller_source() -> None:
    a, b = FakeLoader("a", 5), FakeLoader("b", 2)
    mixed = MixedLoader(a, b, pattern=(2, 1), names=("coco", "alp"))
    got = [x for _, (_, x) in zip(range(9), mixed, strict=False)]
    assert got == ["a0.0", "a0.1", "b0.0", "a0.2", "a0.3", "b0.1", "a0.4", "a1.0", "b1.0"]
    assert a.dataset.epochs_set == [1] and b.dataset.epochs_set == [1]
    names = [n for _, (n, _) in zip(range(6), MixedLoader(a, b, pattern=(2, 1)), strict=False)]
    assert names == ["a", "a", "b", "a", "a", "b"]


def test_mixed_loader_epochs_are_bounded_and_continue() -> None:
    mixed = MixedLoader(FakeLoader("a", 3), FakeLoader("b", 3), batches_per_epoch=4)
    assert len(mixed) == 4
    first, second = [x for _, x in mixed], [x for _, x in mixed]
    assert first == ["a0.0", "b0.0", "a0.1", "b0.1"]
    assert second == ["a0.2", "b0.2", "a1.0", "b1.0"]
    with pytest.raises(TypeError):
        len(MixedLoader(FakeLoader("a", 1), FakeLoader("b", 1)))
    only_b = MixedLoader(
        FakeLoader("a", 1), FakeLoader("b", 1), pattern=(0, 1), batches_per_epoch=3
    )
    assert [name for name, _ in only_b] == ["b", "b", "b"]


def test_mixed_loader_refuses_an_empty_source_instead_of_looping() -> None:
    mixed = MixedLoader(FakeLoader("a", 2), FakeLoader("b", 0))
    with pytest.raises(RuntimeError, match="'b' yielded no batch"):
        list(zip(range(10), mixed, strict=False))
    with pytest.raises(ValueError, match="pattern"):
        MixedLoader(FakeLoader("a", 1), FakeLoader("b", 1), pattern=(0, 0))


def _png(seed: int, h: int, w: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def _coco_shard(path: Path, first: int, n: int) -> str:
    members = []
    for i in range(first, first + n):
        mask = np.zeros((20, 30), dtype=bool)
        mask[2 : 4 + i % 10, 5:15] = True
        instance = {
            "annotation_id": i, "category_id": 18, "class_name": "dog",
            "box_xyxy_px": [5, 2, 15, 4 + i % 10], "area": float(mask.sum()), "iscrowd": False,
            "has_mask": True, "rle": encode_mask(mask), "source": "mask",
        }  # fmt: skip
        doc = {
            "format": COCO_SHARDS_FORMAT, "schema_version": COCO_SHARDS_VERSION, "image_id": i,
            "file_name": f"{i}.png", "width": 30, "height": 20, "instances": [instance] * (i % 3),
            "dead_annotations": 0,
        }  # fmt: skip
        members += [(f"{i:012d}.instances.json", json.dumps(doc).encode())]
        members += [(f"{i:012d}.png", _png(i, 20, 30))]
    return _write(path, members)


def _alp_shard(path: Path, first: int, n: int) -> str:
    members = []
    for i in range(first, first + n):
        alp = {
            "annotator_id": 1, "alp_index": 0, "phrase": "red kite",
            "phrase_id": phrase_id("red kite"), "head_lemma": "kite", "start_char": 0,
            "end_char": 8, "t_start": 0.0, "t_end": 1.0,
            "box_xyxy_norm": [0.1, 0.2, 0.6, 0.9], "n_points": 4,
        }  # fmt: skip
        doc = {
            "schema_version": SCHEMA_VERSION, "image_key": f"d/{i}", "dataset_id": "d",
            "image_id": str(i), "embedding_dim": 4, "narratives": [], "alps": [alp] * (1 + i % 2),
        }  # fmt: skip
        npy = io.BytesIO()
        np.save(npy, np.ones((1 + i % 2, 4), dtype=np.float32))
        members += [(f"d%2F{i}.alps.json", json.dumps(doc).encode())]
        members += [(f"d%2F{i}.embeddings.npy", npy.getvalue()), (f"d%2F{i}.png", _png(i, 24, 18))]
    return _write(path, members)


@pytest.mark.timeout(120)
def test_mixed_loader_over_coco_and_alp_shards_with_workers(tmp_path: Path) -> None:
    coco_urls = [_coco_shard(tmp_path / f"coco-{s}.tar", 4 * s, 4) for s in range(2)]
    alp_urls = [_alp_shard(tmp_path / "alp-0.tar", 0, 3)]  # one shard: resampled epochs
    transform = TrainTransform(size=32)
    coco = CocoShardDataset(coco_urls, transform=transform, seed=0)
    alps = AlpShardDataset(alp_urls, transform=transform, seed=0, epoch_length=4)
    mixed = MixedLoader(
        make_loader(coco, batch_size=2, num_workers=2, drop_last=True),
        make_loader(alps, batch_size=2, num_workers=0),
        pattern=(1, 2),
        names=("coco", "alp"),
        batches_per_epoch=9,
    )
    seen = []
    for name, (images, targets) in mixed:
        seen.append(name)
        assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8
        assert len(targets) == 2
        for t in targets:
            alp = name == "alp"
            assert bool((t["is_alp"] == alp).all())
            assert (t["masks"] is None) == alp
            assert set(t["source"]) <= ({"alp"} if alp else {"mask"})
            if not alp:
                assert t["masks"].shape == (len(t["source"]), 32, 32)
    assert seen == ["coco", "alp", "alp"] * 3
    # coco: 4 batches per epoch (2 workers x 2 full batches), so the 4th coco batch started
    # epoch 1; alps: 2 batches per epoch, so the 6 alp batches took 3 epochs.
    assert (coco.epoch, alps.epoch) == (0, 2)
