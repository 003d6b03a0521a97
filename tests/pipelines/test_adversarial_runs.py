"""Whole runs of pipelines/extract_alps.py on inputs that fight back, checking that every input is
accounted for and nothing else is lost: a byte-order mark, ids whose keys used to collide, a bad
annotator_id, a .jsonl.gz cut exactly at a line boundary, a folder and a FIFO where images should
be; and a COCO instances file given as narratives.

Runs use FnApiRunner, chosen explicitly, and the offline MiniLM encoder; they are slow.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from alp_curation.streams import BOM
from alp_dataset.schema import MANIFEST_NAME, image_key_of_sample, manifest_problems
from alp_dataset.synthetic import write_world
from pipelines.extract_alps import run

REPO = Path(__file__).resolve().parents[2]


def extract(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = run(["--text-encoder", "minilm", "--runner", "FnApiRunner", *argv])
    return status, out.getvalue(), err.getvalue()


def dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


def samples_of(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
    return samples


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_on_adversarial_inputs_accounts_for_every_line(tmp_path: Path) -> None:
    world = write_world(tmp_path / "world", 8, seed=3, images=True)
    assert world.images is not None
    narratives = [json.loads(line) for line in world.narratives.read_text().splitlines()]
    pngs = sorted(world.images.glob("*.png"))
    ids = [("x/a", "b"), ("x", "a/b"), ("ds", "badannotator"), ("ds", "folder"), ("ds", "fifo")]
    ids.append(("ds", "ok"))
    first = []
    for n, (dataset_id, image_id) in zip(narratives, ids, strict=False):
        first.append({**n, "dataset_id": dataset_id, "image_id": image_id})
    first[2]["annotator_id"] = "7"  # wrong_type: a dead letter that still names its image
    (tmp_path / "a.jsonl").write_bytes(BOM + b"".join(dumps(n) + b"\n" for n in first))
    # The .gz holds two narratives and is cut exactly after them, inside its stream.
    packer = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    cut = b"".join(
        packer.compress(dumps(n) + b"\n") + packer.flush(zlib.Z_FULL_FLUSH) for n in narratives[6:]
    )
    (tmp_path / "b.jsonl.gz").write_bytes(cut)
    images = tmp_path / "images"
    (images / "ds").mkdir(parents=True)
    shutil.copy(pngs[0], images / "b.png")  # ROOT/<image_id>: "x/a" names no folder
    shutil.copy(pngs[1], images / "ds" / "ok.png")
    (images / "ds" / "folder.png").mkdir()
    os.mkfifo(images / "ds" / "fifo.png")

    out = tmp_path / "out"
    status, _, err = extract(
        "--input", str(tmp_path / "*.jsonl*"), "--output", str(out), "--images", str(images)
    )
    assert status == 0, err
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest_problems(manifest) == []
    c = manifest["counts"]
    assert c["input_lines"] == 6 + 2 + 1  # the read_error of the cut .gz counts as a line
    dead = {r: n for r, n in c["dead_letters"]["by_reason"].items() if n}
    assert dead == {"wrong_type": 1, "read_error": 1}
    assert c["records"]["total"] == 7 == c["records"]["with_alps"]  # the BOM line among them
    assert c["shards"] == {"samples": 7, "image_files_found": 2, "image_files_missing": 5}

    letters = [
        json.loads(line)
        for path in sorted((out / "dead_letters").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    by_reason = {d["reason"]: d for d in letters}
    assert by_reason["wrong_type"]["record_key"] == "ds/badannotator"
    read_error = by_reason["read_error"]
    assert (
        read_error["source_line"] == 3
        and "b.jsonl.gz: cannot be read after line 2" in (read_error["message"])
    )

    samples = samples_of(out)
    docs = {image_key_of_sample(k): json.loads(v["alps.json"]) for k, v in samples.items()}
    assert {"x%2Fa/b", "x/a%2Fb"} <= set(docs)  # two images, two samples
    assert (docs["x%2Fa/b"]["dataset_id"], docs["x%2Fa/b"]["image_id"]) == ("x/a", "b")
    assert (docs["x/a%2Fb"]["dataset_id"], docs["x/a%2Fb"]["image_id"]) == ("x", "a/b")
    assert all(len(d["narratives"]) == 1 for d in docs.values())
    with_images = {image_key_of_sample(k) for k, v in samples.items() if "png" in v}
    assert with_images == {"x%2Fa/b", "ds/ok"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_coco_instances_given_as_narratives_warn_and_fail_past_the_limit(tmp_path: Path) -> None:
    instances = REPO / "samples" / "synthetic" / "instances.json"
    out = tmp_path / "out"
    status, _, err = extract(
        "--input", str(instances), "--output", str(out), "--fail-on-dead-letters", "0.5"
    )
    assert status == 3
    assert "warning: every one of the" in err and "almost always the wrong input" in err
    assert f"{instances} looks like COCO instances JSON, not Localized Narratives JSONL" in err
    assert f"pipelines/build_coco_shards.py --instances {instances}" in err
    assert "more than --fail-on-dead-letters 0.5 allows" in err
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    c = manifest["counts"]
    assert c["input_lines"] == c["dead_letters"]["total"] > 0
