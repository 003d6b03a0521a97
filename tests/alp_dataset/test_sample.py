from __future__ import annotations

from pathlib import Path

import pytest

from alp_dataset.synthetic import write_world

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "synthetic"


@pytest.mark.slow
def test_the_embedded_sample_is_what_the_generator_writes(tmp_path: Path) -> None:
    """Golden files: a change to the generator that alters the sample must re-make it on purpose
    (the command is in samples/synthetic/README.md)."""
    paths = write_world(tmp_path, 100, seed=0, images=False)
    for made in (paths.narratives, paths.instances, paths.ground_truth):
        assert made.read_bytes() == (SAMPLE / made.name).read_bytes(), made.name
