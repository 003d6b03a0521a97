"""Tests for models/evaluation/shards.py and the usage errors of ``python -m models.evaluate``
about its shards: missing files, shards without images, ALP shards (by manifest and by member),
each named with its path before any model is loaded."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from alp_dataset.coco_shards import COCO_SHARDS_FORMAT
from models.evaluate import main
from models.evaluation.shards import ALP_SHARDS_MESSAGE, ShardsError, inspect_eval_shards


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _output(root: Path, manifest: dict, shards: dict[str, dict[str, bytes]]) -> list[str]:
    """A pipeline output folder: shards/<name> and manifest.json listing them with their rows."""
    paths = [_tar(root / "shards" / name, members) for name, members in shards.items()]
    rows = {name: len({m.split(".")[0] for m in members}) for name, members in shards.items()}
    listed = [{"path": f"shards/{name}", "rows": rows[name]} for name in shards]
    (root / "manifest.json").write_text(json.dumps({**manifest, "files": {"shards": listed}}))
    return [str(p) for p in paths]


COCO_MEMBERS = {"000001.jpg": b"x", "000001.instances.json": b"{}"}
ALP_MEMBERS = {"a.jpg": b"x", "a.alps.json": b"{}", "a.embeddings.npy": b"x"}
# The keys of pipelines/extract_alps.py's manifest that tell it apart (no "format").
ALP_MANIFEST = {"schema_version": "1.1", "tagger": {"model": "x"}, "encoder": {"id": "minilm"}}


def test_the_manifests_give_the_number_of_images(tmp_path: Path) -> None:
    two = {"000001.jpg": b"x", "000001.instances.json": b"{}", "000002.jpg": b"x",
           "000002.instances.json": b"{}"}  # fmt: skip
    urls = _output(
        tmp_path / "coco", {"format": COCO_SHARDS_FORMAT},
        {"shard-000000.tar": two, "shard-000001.tar": COCO_MEMBERS},
    )  # fmt: skip
    assert inspect_eval_shards(urls).num_images == 3
    assert inspect_eval_shards(urls[1:]).num_images == 1  # only the shards given
    assert inspect_eval_shards(urls).kind == "coco"
    loose = _tar(tmp_path / "loose" / "x.tar", COCO_MEMBERS)  # no manifest: count unknown
    shards = inspect_eval_shards([str(loose)])
    assert (shards.kind, shards.num_images) == ("coco", None)
    assert inspect_eval_shards(["https://example.org/shard.tar"]).num_images is None


def test_missing_empty_and_alp_shards_are_named(tmp_path: Path) -> None:
    with pytest.raises(ShardsError, match=r"no shard file matches .*nowhere-000\.tar"):
        inspect_eval_shards([str(tmp_path / "nowhere-000.tar"), str(tmp_path / "nowhere-001.tar")])
    real = _tar(tmp_path / "real.tar", COCO_MEMBERS)
    with pytest.raises(ShardsError, match=r"1 of 2 shard files do not exist, e.g. .*gone\.tar"):
        inspect_eval_shards([str(real), str(tmp_path / "gone.tar")])
    empty = _output(tmp_path / "empty", {"format": COCO_SHARDS_FORMAT}, {"shard-0.tar": {}})
    with pytest.raises(ShardsError, match=r"shard-0\.tar: the shards hold no image"):
        inspect_eval_shards(empty)
    alps = _output(tmp_path / "alps", ALP_MANIFEST, {"shard-000000.tar": ALP_MEMBERS})
    with pytest.raises(ShardsError, match=r"these are ALP shards from pipelines/extract_alps\.py"):
        inspect_eval_shards(alps)
    copied = _tar(tmp_path / "copied" / "shard.tar", ALP_MEMBERS)  # no manifest: by member
    with pytest.raises(ShardsError, match=r"copied/shard\.tar: these are ALP shards"):
        inspect_eval_shards([str(copied)])


@pytest.mark.parametrize("case", ["missing", "empty", "alp-folder", "alp-pattern"])
def test_the_command_line_fails_with_a_usage_error_naming_the_path(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if case == "missing":
        shards, named = str(tmp_path / "coco" / "shard-{000000..000003}.tar"), "shard-000000.tar"
    elif case == "empty":
        _output(tmp_path / "empty", {"format": COCO_SHARDS_FORMAT}, {"shard-000000.tar": {}})
        shards, named = str(tmp_path / "empty"), "shard-000000.tar: the shards hold no image"
    else:
        _output(tmp_path / "alps", ALP_MANIFEST, {"shard-000000.tar": ALP_MEMBERS})
        shards = str(
            tmp_path / "alps" / ("" if case == "alp-folder" else "shards/shard-000000.tar")
        )
        named = ALP_SHARDS_MESSAGE
    # The checkpoint does not exist: the shards are checked before a model is loaded.
    argv = ["--checkpoint", str(tmp_path / "no.pt"), "--shards", shards,
            "--base-classes", "circle", "--novel-classes", "square"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--shards" in err and named in err, err
