"""Tests for alp_dataset/datasets.py: the stages on plain lists, decoding on tiny hand-written
shards, then sharding over simulated ranks with real DataLoader workers, and corrupt shards.

Shards are written here in the documented layouts (docs/data_format.md, docs/coco_shards.md)
with tarfile, so every expected value is known.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from alp_dataset.coco_shards import (
    COCO_SHARDS_FORMAT,
    COCO_SHARDS_VERSION,
    coco_sample_key,
    encode_mask,
)
from alp_dataset.datasets import (
    AlpShardDataset,
    CocoShardDataset,
    CorruptDataWarning,
    WorkerSlot,
    decode_coco_sample,
    exact_shards,
    map_samples,
    output_shards,
    read_shards,
    resampled_shards,
    shard_urls,
    shuffle_samples,
    worker_quota,
)
from alp_dataset.loader import make_loader
from alp_dataset.schema import SCHEMA_VERSION, phrase_id, sample_key
from alp_dataset.transforms import EvalTransform, TrainTransform

DIM = 8
FIXED = EvalTransform(size=16)  # batches need one image size


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _image(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@dataclass(frozen=True)
class TinyImage:
    index: int
    h: int
    w: int

    @property
    def image_id(self) -> str:
        return f"img.{self.index:03d}"  # a "." that the sample key must escape

    @property
    def key(self) -> str:
        return sample_key(f"d/{self.image_id}")

    @property
    def pixels(self) -> np.ndarray:
        return _image(self.index, self.h, self.w)

    @property
    def n_alps(self) -> int:
        return self.index % 3  # 0, 1 or 2 ALPs

    def boxes_norm(self) -> list[list[float]]:
        return [[0.1 * k, 0.25, 0.5 + 0.1 * k, 0.75] for k in range(self.n_alps)]

    def embeddings(self) -> np.ndarray:
        return np.arange(self.n_alps * DIM, dtype=np.float32).reshape(self.n_alps, DIM) + self.index


def alp_sample_members(t: TinyImage) -> list[tuple[str, bytes]]:
    alps = [
        {
            "annotator_id": 1,
            "alp_index": k,
            "phrase": f"red thing {k}",
            "phrase_id": phrase_id(f"red thing {k}"),
            "head_lemma": "thing",
            "start_char": 0,
            "end_char": 11,
            "t_start": 0.0,
            "t_end": 1.0,
            "box_xyxy_norm": box,
            "n_points": 5,
        }
        for k, box in enumerate(t.boxes_norm())
    ]
    doc = {
        "schema_version": SCHEMA_VERSION,
        "image_key": f"d/{t.image_id}",
        "dataset_id": "d",
        "image_id": t.image_id,
        "embedding_dim": DIM,
        "narratives": [],
        "alps": alps,
    }
    npy = io.BytesIO()
    np.save(npy, t.embeddings())
    return [
        (f"{t.key}.alps.json", json.dumps(doc).encode()),
        (f"{t.key}.embeddings.npy", npy.getvalue()),
        (f"{t.key}.png", _png(t.pixels)),
    ]


def coco_masks(t: TinyImage) -> np.ndarray:
    """bool (3, h, w): a rectangle each, instance 1 box only."""
    masks = np.zeros((3, t.h, t.w), dtype=bool)
    masks[0, 2:10, 3:12] = True
    masks[1, 5:9, 1:4] = True
    masks[2, 10:14, 10:20] = True
    return masks


def coco_sample_members(t: TinyImage) -> list[tuple[str, bytes]]:
    masks = coco_masks(t)
    names = ["dog", "kite", "person"]
    instances = [
        {
            "annotation_id": 10 * t.index + k,
            "category_id": k + 1,
            "class_name": names[k],
            "box_xyxy_px": [[3, 2, 12, 10], [1, 5, 4, 9], [10, 10, 20, 14]][k],
            "area": float(masks[k].sum()),
            "iscrowd": k == 2,
            "has_mask": k != 1,
            "rle": encode_mask(masks[k]) if k != 1 else None,
            "source": "box" if k == 1 else "mask",
        }
        for k in range(3)
    ]
    doc = {
        "format": COCO_SHARDS_FORMAT,
        "schema_version": COCO_SHARDS_VERSION,
        "image_id": t.index,
        "file_name": f"{t.index}.png",
        "width": t.w,
        "height": t.h,
        "instances": instances,
        "dead_annotations": 0,
    }
    key = coco_sample_key(t.index)
    return [(f"{key}.instances.json", json.dumps(doc).encode()), (f"{key}.png", _png(t.pixels))]


def write_shard(path: Path, members: Sequence[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            _member(tar, name, data)
    return str(path)


def write_alp_shards(
    root: Path, n_shards: int, per_shard: int
) -> tuple[list[str], list[TinyImage]]:
    images = [TinyImage(i, 24 + i % 5, 32 - i % 4) for i in range(n_shards * per_shard)]
    urls = [
        write_shard(
            root / f"alp-{s:06d}.tar",
            [m for t in images[s * per_shard : (s + 1) * per_shard] for m in alp_sample_members(t)],
        )
        for s in range(n_shards)
    ]
    return urls, images


@pytest.fixture(scope="module")
def alp_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[TinyImage]]:
    return write_alp_shards(tmp_path_factory.mktemp("alp"), 4, 5)


@pytest.fixture(scope="module")
def coco_shard(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[TinyImage]]:
    images = [TinyImage(i, 16, 24) for i in range(3)]
    members = [m for t in images for m in coco_sample_members(t)]
    return write_shard(tmp_path_factory.mktemp("coco") / "coco.tar", members), images


def keys_of(samples: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> list[str]:
    return [target["key"] for _, target in samples]


# ---------------------------------------------------------------------------------------------
# Stages on lists


@pytest.mark.parametrize(("world", "workers"), [(1, 1), (1, 3), (2, 2), (4, 1), (3, 2)])
def test_exact_shards_give_every_shard_to_one_worker(world: int, workers: int) -> None:
    urls = [f"s{i:02d}" for i in range(12)]
    dealt = [
        exact_shards(urls, seed=3, epoch=1, slot=WorkerSlot(r, world, w, workers))
        for r in range(world)
        for w in range(workers)
    ]
    assert sorted(u for part in dealt for u in part) == urls
    per_rank = [sum(len(dealt[r * workers + w]) for w in range(workers)) for r in range(world)]
    assert len(set(per_rank)) == 1  # 12 shards divide over every world size here
    again = exact_shards(urls, seed=3, epoch=1, slot=WorkerSlot(0, world, 0, workers))
    assert again == dealt[0]
    orders = {tuple(exact_shards(urls, seed=3, epoch=e, slot=WorkerSlot())) for e in range(4)}
    assert len(orders) == 4  # a new permutation each epoch


def test_resampled_shards_and_quotas_are_seeded() -> None:
    urls = ["a", "b", "c"]
    slot = WorkerSlot(1, 2, 0, 2)
    first = [
        next(it) for it in [resampled_shards(urls, seed=0, epoch=0, slot=slot)] for _ in range(20)
    ]
    again = resampled_shards(urls, seed=0, epoch=0, slot=slot)
    assert [next(again) for _ in range(20)] == first
    other = resampled_shards(urls, seed=0, epoch=0, slot=WorkerSlot(1, 2, 1, 2))
    assert [next(other) for _ in range(20)] != first
    assert set(first) <= set(urls)
    for length in (1, 7, 10):
        for n in (1, 2, 3):
            assert sum(worker_quota(length, WorkerSlot(0, 1, w, n)) for w in range(n)) == length


def test_shuffle_samples_permutes_through_a_buffer() -> None:
    items = [{"__key__": str(i)} for i in range(50)]
    out = list(shuffle_samples(items, buffer_size=8, rng=random.Random(0)))
    assert sorted(out, key=lambda s: int(s["__key__"])) == items
    assert out != items
    assert out == list(shuffle_samples(items, buffer_size=8, rng=random.Random(0)))
    assert list(shuffle_samples(items, buffer_size=0, rng=random.Random(0))) == items


def test_map_samples_reports_a_failing_sample_and_goes_on() -> None:
    errors: list[tuple[str, str]] = []

    def fn(raw: dict[str, Any]) -> Any:
        if raw["__key__"] == "b":
            raise ValueError("bad")
        return raw["__key__"]

    raws = [{"__key__": k, "__url__": "u"} for k in "abc"]
    out = list(
        map_samples(raws, fn, on_error=lambda kind, where, exc: errors.append((kind, where)))
    )
    assert out == ["a", "c"]
    assert errors == [("sample", "u:b")]


def test_read_shards_keeps_what_precedes_damage(tmp_path: Path) -> None:
    good = write_shard(tmp_path / "good.tar", [("a.json", b"1"), ("a.png", b"2"), ("b.json", b"3")])
    big = [(f"k{i}.json", bytes(3000)) for i in range(4)]
    whole = Path(write_shard(tmp_path / "whole.tar", big)).read_bytes()
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(whole[: 512 + 3000 + 512 + 1000])  # inside the second member
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar file" * 40)
    errors: list[tuple[str, str]] = []
    urls = [str(truncated), good, str(garbage), str(tmp_path / "missing.tar")]
    samples = list(read_shards(urls, on_error=lambda k, w, e: errors.append((k, Path(w).name))))
    assert [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in samples] == [
        ("k0", ["json"]),
        ("a", ["json", "png"]),
        ("b", ["json"]),
    ]
    assert errors == [
        ("shard", "truncated.tar"),
        ("shard", "garbage.tar"),
        ("shard", "missing.tar"),
    ]


# ---------------------------------------------------------------------------------------------
# Decoding


def test_alp_targets(alp_shards: tuple[list[str], list[TinyImage]]) -> None:
    urls, images = alp_shards
    samples = list(AlpShardDataset(urls, shuffle_buffer=0))
    by_key = {t.key: t for t in images}
    assert sorted(keys_of(samples)) == sorted(by_key)
    for image, target in samples:
        t = by_key[target["key"]]
        assert image.dtype == torch.uint8 and image.shape == (3, t.h, t.w)
        assert torch.equal(image, torch.from_numpy(t.pixels).permute(2, 0, 1))
        assert target["image_key"] == f"d/{t.image_id}"
        size = torch.tensor([t.w, t.h, t.w, t.h], dtype=torch.float32)
        expected = torch.tensor(t.boxes_norm(), dtype=torch.float32).reshape(-1, 4) * size
        assert torch.allclose(target["boxes_xyxy_px"], expected)
        assert target["masks"] is None and target["geometry"] is None
        assert target["is_alp"].tolist() == [True] * t.n_alps
        assert target["has_mask"].tolist() == [False] * t.n_alps
        assert target["source"] == ("alp",) * t.n_alps
        assert target["phrase_ids"].tolist() == [phrase_id(p) for p in target["phrases"]]
        assert torch.equal(target["text_embeddings"], torch.from_numpy(t.embeddings()))


def test_coco_targets(coco_shard: tuple[str, list[TinyImage]]) -> None:
    url, images = coco_shard
    names = {"dog": np.full(4, 1.0), "kite": np.full(4, 2.0), "person": np.full(4, 3.0)}
    samples = list(CocoShardDataset(url, shuffle_buffer=0, class_embeddings=names))
    assert keys_of(samples) == [coco_sample_key(t.index) for t in images]
    for (image, target), t in zip(samples, images, strict=True):
        assert image.shape == (3, 16, 24)
        assert target["image_id"] == t.index
        # The crowd instance (the third) is left out by default.
        assert target["phrases"] == ("dog", "kite")
        assert target["source"] == ("mask", "box")
        assert target["has_mask"].tolist() == [True, False]
        assert target["is_alp"].tolist() == [False, False]
        assert target["masks"].dtype == torch.bool
        assert torch.equal(target["masks"][0], torch.from_numpy(coco_masks(t)[0]))
        assert not target["masks"][1].any()
        assert target["boxes_xyxy_px"].tolist() == [[3, 2, 12, 10], [1, 5, 4, 9]]
        assert target["phrase_ids"].tolist() == [phrase_id("dog"), phrase_id("kite")]
        assert target["category_ids"].tolist() == [1, 2]
        assert target["annotation_ids"].tolist() == [10 * t.index, 10 * t.index + 1]
        assert target["text_embeddings"].tolist() == [[1.0] * 4, [2.0] * 4]
    _, crowd = next(iter(CocoShardDataset(url, shuffle_buffer=0, keep_crowd=True)))
    assert crowd["iscrowd"].tolist() == [False, False, True]
    assert crowd["text_embeddings"] is None


def test_train_transform_is_applied_and_seeded(
    alp_shards: tuple[list[str], list[TinyImage]], coco_shard: tuple[str, list[TinyImage]]
) -> None:
    url, _ = coco_shard
    transform = TrainTransform(size=32)

    def run(seed: int, epoch: int = 0) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        dataset = CocoShardDataset(url, transform=transform, seed=seed)
        dataset.set_epoch(epoch)
        return list(dataset)

    first, again, other, later = run(0), run(0), run(1), run(0, epoch=1)
    for (image, target), (image2, target2) in zip(first, again, strict=True):
        assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
        assert target["geometry"].output_hw == (32, 32)
        assert len(target["masks"]) == len(target["boxes_xyxy_px"]) == len(target["source"])
        assert target["masks"].shape[1:] == (32, 32)
        assert torch.equal(image, image2) and target["geometry"] == target2["geometry"]
    assert [t["geometry"] for _, t in first] != [t["geometry"] for _, t in other]
    assert [t["geometry"] for _, t in first] != [t["geometry"] for _, t in later]

    urls, _ = alp_shards
    image, target = next(iter(AlpShardDataset(urls, transform=EvalTransform(size=40))))
    assert image.shape == (3, 40, 40)
    assert target["geometry"].output_hw == (40, 40)


class EagerMaskCocoDataset(CocoShardDataset):
    """Every mask decoded before the transform, as without a TrainTransform."""

    def decode(self, raw: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        return decode_coco_sample(raw, lazy_masks=False)


def test_coco_training_samples_decode_only_what_the_crop_keeps_and_match_full_decoding(
    coco_shard: tuple[str, list[TinyImage]],
) -> None:
    url, images = coco_shard
    transform = TrainTransform(size=12, scale_range=(1.5, 3.0))  # crops: instances fall away
    lazy = list(CocoShardDataset(url, transform=transform, seed=3, shuffle_buffer=0))
    eager = list(EagerMaskCocoDataset(url, transform=transform, seed=3, shuffle_buffer=0))
    assert keys_of(lazy) == keys_of(eager) == [coco_sample_key(t.index) for t in images]
    for (image, target), (eager_image, expected) in zip(lazy, eager, strict=True):
        assert torch.equal(image, eager_image)
        assert target["masks"].dtype == torch.bool
        assert torch.equal(target["masks"], expected["masks"])
        assert torch.equal(target["boxes_xyxy_px"], expected["boxes_xyxy_px"])
        assert target["annotation_ids"].tolist() == expected["annotation_ids"].tolist()
    assert min(len(target["masks"]) for _, target in lazy) < 2  # a crop dropped an instance


# ---------------------------------------------------------------------------------------------
# Ranks, workers, epochs


def collect(dataset: Any, num_workers: int) -> list[str]:
    keys: list[str] = []
    for _, targets in make_loader(dataset, batch_size=2, num_workers=num_workers):
        keys += [t["key"] for t in targets]
    return keys


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world", [1, 2, 4])
def test_exact_epochs_read_each_sample_once_over_ranks_and_workers(
    alp_shards: tuple[list[str], list[TinyImage]], world: int
) -> None:
    urls, images = alp_shards
    per_rank = [
        collect(
            AlpShardDataset(urls, rank=r, world_size=world, seed=5, transform=FIXED),
            num_workers=2,
        )
        for r in range(world)
    ]
    every = [k for keys in per_rank for k in keys]
    assert Counter(every) == Counter(t.key for t in images)  # each sample exactly once
    assert {len(keys) for keys in per_rank} == {len(images) // world}  # full shards here


def test_exact_epochs_need_shards_that_divide_over_ranks(
    alp_shards: tuple[list[str], list[TinyImage]],
) -> None:
    urls, _ = alp_shards
    with pytest.raises(ValueError, match=r"4 shards do not divide over 3 ranks.*epoch_length"):
        AlpShardDataset(urls, rank=0, world_size=3)
    with pytest.raises(ValueError, match="rank 3 outside world_size 2"):
        AlpShardDataset(urls, rank=3, world_size=2, epoch_length=4)


@pytest.mark.timeout(120)
def test_resampled_epochs_have_a_fixed_length_when_shards_are_few(tmp_path: Path) -> None:
    urls, images = write_alp_shards(tmp_path, 2, 3)  # 2 shards < 3 ranks x 2 workers
    keys = {t.key for t in images}
    for rank in range(3):
        epochs = []
        for epoch in range(2):
            dataset = AlpShardDataset(
                urls, rank=rank, world_size=3, epoch_length=7, seed=1, transform=FIXED
            )
            dataset.set_epoch(epoch)
            got = collect(dataset, num_workers=2)
            assert len(got) == 7 and set(got) <= keys
            epochs.append(got)
        assert epochs[0] != epochs[1]
    one = AlpShardDataset(urls[:1], epoch_length=5, shuffle_buffer=0)
    assert len(list(one)) == 5  # fewer samples than asked: the shard is drawn again


@pytest.mark.timeout(120)
def test_exact_mode_gives_each_sample_the_same_augmentation_whatever_the_workers(
    alp_shards: tuple[list[str], list[TinyImage]],
) -> None:
    urls, _ = alp_shards

    def by_key(num_workers: int) -> dict[str, torch.Tensor]:
        dataset = AlpShardDataset(urls, transform=TrainTransform(size=16), seed=2)
        loader = make_loader(dataset, batch_size=1, num_workers=num_workers)
        return {t[0]["key"]: t[0]["boxes_xyxy_px"] for _, t in loader}

    single, double = by_key(0), by_key(2)
    assert single.keys() == double.keys()
    assert all(torch.equal(single[k], double[k]) for k in single)


# ---------------------------------------------------------------------------------------------
# Corrupt data


@pytest.fixture(scope="module")
def damaged_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], int]:
    """Two good shards, a truncated one (its first sample whole), a garbage file, and a shard
    with one undecodable sample; and how many samples can be read."""
    root = tmp_path_factory.mktemp("damaged")
    urls, images = write_alp_shards(root, 2, 4)
    whole = Path(urls[0]).read_bytes()
    first_sample = alp_sample_members(images[0])
    cut = sum(512 + -(-len(data) // 512) * 512 for _, data in first_sample) + 700
    truncated = root / "truncated.tar"
    truncated.write_bytes(whole[:cut])
    garbage = root / "garbage.tar"
    garbage.write_bytes(bytes(range(256)) * 8)
    bad_members = alp_sample_members(TinyImage(90, 10, 10))
    bad_members[0] = (bad_members[0][0], b"{not json")
    mixed = write_shard(
        root / "mixed.tar", [*bad_members, *alp_sample_members(TinyImage(91, 10, 10))]
    )
    return [*urls, str(truncated), str(garbage), mixed], 8 + 1 + 1


def test_corrupt_shards_are_skipped_with_a_warning_and_a_count(
    damaged_shards: tuple[list[str], int],
) -> None:
    urls, readable = damaged_shards
    dataset = AlpShardDataset(urls, shuffle_buffer=0)
    with pytest.warns(CorruptDataWarning) as caught:
        samples = list(dataset)
    assert len(samples) == readable
    assert dataset.error_counts() == {"bad_shards": 2, "bad_samples": 1}
    messages = " ".join(str(w.message) for w in caught)
    assert "truncated.tar" in messages and "garbage.tar" in messages and "mixed.tar" in messages
    dataset.reset_error_counts()
    assert dataset.error_counts() == {"bad_shards": 0, "bad_samples": 0}
    with pytest.raises((tarfile.ReadError, json.JSONDecodeError)):
        list(AlpShardDataset(urls, shuffle_buffer=0, on_error="raise"))


def _header_offsets(data: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [m.offset for m in tar.getmembers()]


def _corrupt_header(data: bytes, offset: int) -> bytes:
    broken = bytearray(data)
    broken[offset + 5] ^= 0x55  # inside the name: the checksum no longer matches
    return bytes(broken)


def test_the_coco_dataset_counts_the_shard_and_the_broken_sample(
    coco_shard: tuple[str, list[Any]], tmp_path: Path
) -> None:
    url, images = coco_shard
    data = Path(url).read_bytes()
    broken = tmp_path / "coco-broken.tar"
    broken.write_bytes(_corrupt_header(data, _header_offsets(data)[2]))  # sample 1's json
    dataset = CocoShardDataset(str(broken), shuffle_buffer=0)
    with pytest.warns(CorruptDataWarning) as caught, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools' numpy 2 notice
        samples = list(dataset)
    assert [t["image_id"] for _, t in samples] == [images[0].index, images[2].index]
    assert dataset.error_counts() == {"bad_shards": 1, "bad_samples": 1}
    messages = [str(w.message) for w in caught if w.category is CorruptDataWarning]
    assert len(messages) == 2
    assert "resumed at the next valid header" in messages[0]
    assert "no instances.json member" in messages[1]


@pytest.mark.timeout(120)
def test_counts_from_loader_workers_reach_the_training_process(
    damaged_shards: tuple[list[str], int],
) -> None:
    urls, readable = damaged_shards
    dataset = AlpShardDataset(urls, transform=FIXED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptDataWarning)
        keys = collect(dataset, num_workers=2)
    assert len(keys) == readable
    assert dataset.error_counts() == {"bad_shards": 2, "bad_samples": 1}


@pytest.mark.timeout(60)
def test_resampling_only_bad_shards_fails_instead_of_hanging(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"\x00garbage" * 100)
    dataset = AlpShardDataset([str(garbage)], epoch_length=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptDataWarning)
        with pytest.raises(RuntimeError, match="without a single sample"):
            list(dataset)


def test_a_coco_sample_with_damaged_masks_is_skipped(tmp_path: Path) -> None:
    good, bad, wrong_size = (TinyImage(i, 16, 24) for i in range(3))
    members = coco_sample_members(bad)
    doc = json.loads(members[0][1])
    doc["instances"][0]["rle"]["counts"] = encode_mask(np.ones((4, 4), dtype=bool))["counts"]
    odd = coco_sample_members(wrong_size)
    odd_doc = json.loads(odd[0][1])
    odd_doc["width"] = 25  # the image is 24 wide
    url = write_shard(
        tmp_path / "coco.tar",
        [
            *coco_sample_members(good),
            (members[0][0], json.dumps(doc).encode()),
            members[1],
            (odd[0][0], json.dumps(odd_doc).encode()),
            odd[1],
        ],
    )
    dataset = CocoShardDataset(url, shuffle_buffer=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CorruptDataWarning)
        samples = list(dataset)
    messages = [str(w.message) for w in caught if w.category is CorruptDataWarning]
    assert any("runs do not cover the image" in m for m in messages)
    assert any("24 x 16, instances.json says 25 x 16" in m for m in messages)
    assert keys_of(samples) == [coco_sample_key(0)]
    assert dataset.error_counts() == {"bad_shards": 0, "bad_samples": 2}


def test_a_pipeline_output_folder_resolves_to_the_shards_its_manifest_lists(
    tmp_path: Path,
) -> None:
    (tmp_path / "shards").mkdir()
    for name in ("shard-000000.tar", "shard-000001.tar"):
        (tmp_path / "shards" / name).write_bytes(b"")
    listed = [{"path": "shards/shard-000000.tar"}, {"path": "shards/shard-000001.tar"}]
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {"shards": listed}}))
    expected = [str(tmp_path / entry["path"]) for entry in listed]
    assert shard_urls(tmp_path) == expected == output_shards(tmp_path)
    assert shard_urls(str(tmp_path / "shards" / "shard-{000000..000001}.tar")) == expected
    (tmp_path / "shards" / "shard-000001.tar").unlink()
    with pytest.raises(ValueError, match="1 listed shard"):
        shard_urls(tmp_path)
    with pytest.raises(ValueError, match=r"no manifest\.json"):
        output_shards(tmp_path / "shards")
