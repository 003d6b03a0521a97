"""Grouping rows into output files through the local disk: the same rows reach the same files as
through the runner's GroupByKey, and the files written are the same bytes."""

from __future__ import annotations

import os
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from alp_curation.curate import Alp
from alp_dataset.schema import n_parts
from pipelines import spill, writers
from pipelines.elements import AlpRow, DeadLetter
from pipelines.spill import RouteSpillsFn, SpillFn, read_part, spill_folder
from pipelines.writers import Spilled, alp_table, table_sorted_by, write_alp_table


def beam_pipeline() -> BeamTestPipeline:
    return BeamTestPipeline(runner="FnApiRunner", options=PipelineOptions([]))


def _spill(folder: Path, rows: list[int], part_of=lambda r: r * 7919) -> tuple[str, int]:
    fn = SpillFn(str(folder), part_of)
    fn.start_bundle()
    for row in rows:
        assert list(fn.process(row)) == []
    (summary,) = list(fn.finish_bundle())
    return summary.value


def test_rows_are_routed_to_the_part_of_their_hash_and_every_part_is_listed(
    tmp_path: Path,
) -> None:
    spills = [_spill(tmp_path, list(range(0, 25))), _spill(tmp_path, list(range(25, 40)))]
    assert [n for _, n in spills] == [25, 15]
    parts = list(RouteSpillsFn(str(tmp_path), rows_per_part=10).process(None, spills))
    n = n_parts(40, 10)
    assert [key for key, _ in parts] == [(i, n) for i in range(n)]
    for (index, _), path in parts:
        assert sorted(read_part(path)) == [r for r in range(40) if (r * 7919) % n == index]
    assert not any(os.path.exists(path) for path, _ in spills)  # routed spills are removed


def test_a_count_given_sets_the_number_of_parts_and_empty_parts_have_no_file(
    tmp_path: Path,
) -> None:
    spills = [_spill(tmp_path, [1, 2, 3], part_of=lambda r: 0)]
    parts = list(RouteSpillsFn(str(tmp_path), rows_per_part=2).process(None, spills, n_rows=9))
    assert [key for key, _ in parts] == [(i, 5) for i in range(5)]
    assert parts[0][1] is not None and sorted(read_part(parts[0][1])) == [1, 2, 3]
    assert all(path is None for _, path in parts[1:])
    assert list(read_part(None)) == []
    # No spill at all (an empty input): one empty part, as n_parts(0, k) == 1.
    assert list(RouteSpillsFn(str(tmp_path), 2).process(None, [])) == [((0, 1), None)]


def test_a_bundle_without_rows_spills_nothing(tmp_path: Path) -> None:
    fn = SpillFn(str(tmp_path), hash)
    fn.start_bundle()
    assert list(fn.finish_bundle() or ()) == []
    assert list(tmp_path.iterdir()) == []


def test_a_spill_file_cut_short_fails_naming_it(tmp_path: Path) -> None:
    path, rows = _spill(tmp_path, [1, 2, 3])
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:-3])
    with pytest.raises(OSError, match=r"spill-[0-9a-f]+: spill file cut short in a row"):
        list(RouteSpillsFn(str(tmp_path), 10).process(None, [(path, rows)]))
    assert os.path.exists(path)  # a failed route keeps its input


def test_routing_buffers_are_flushed_before_they_grow_past_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spill, "ROUTE_BUFFER_BYTES", 64)
    spills = [_spill(tmp_path, list(range(100)))]
    parts = list(RouteSpillsFn(str(tmp_path), 30).process(None, spills))
    assert sorted(r for _, path in parts for r in read_part(path)) == list(range(100))


def test_the_spill_folder_is_under_tmpdir_and_removed_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    with spill_folder(True) as folder:
        assert folder is not None and Path(folder).parent == tmp_path
        (Path(folder) / "spill-x").write_bytes(b"x")
    assert not Path(folder).exists()
    with spill_folder(False) as none:
        assert none is None


def _alp_rows(n: int) -> list[AlpRow]:
    rows = []
    for k in range(n):
        image = ["b", "a", "é", "z", "ä1", "A"][k % 6] + str(k % 11)
        alp = Alp("ds", image, k % 3, f"thing {k}", "thing", 0, 5, 1.0, 2.0, (0, 0, 1, 1), 4)
        rows.append(AlpRow.of(alp, k % 4, f"in-{k % 2}.jsonl", k))
    return rows


def test_arrow_sorting_in_chunks_gives_the_rows_in_python_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(writers, "TABLE_CHUNK_ROWS", 7)
    rows = _alp_rows(60)
    expected = alp_table(sorted(rows, key=AlpRow.sort_key))
    got = table_sorted_by([*rows[:30], None, *rows[30:]], alp_table, writers.ALP_SORT_KEY)
    assert got.equals(expected)
    assert table_sorted_by([], alp_table, writers.ALP_SORT_KEY).equals(alp_table([]))


def _dead_letters(n: int) -> list[DeadLetter]:
    return [
        DeadLetter(f"in-{k % 3}.jsonl", k, "json_decode", "", f"line {k}", "", b"{", 1, "0", False)
        for k in range(n)
    ]


@pytest.mark.parametrize("n_rows", [0, 23])
def test_written_files_are_the_same_bytes_through_the_disk_or_a_group_by_key(
    tmp_path: Path, n_rows: int
) -> None:
    rows, letters = _alp_rows(n_rows), _dead_letters(n_rows)
    folder = tmp_path / "spill"
    folder.mkdir()
    for mode in ("grouped", "spilled"):
        spilled = Spilled(str(folder)) if mode == "spilled" else None
        out = str(tmp_path / mode)
        with beam_pipeline() as p:
            _ = p | "Alps" >> beam.Create(rows) | write_alp_table(out, 5, spilled=spilled)
            _ = (
                p
                | "Dead" >> beam.Create(letters)
                | "WriteDead" >> writers.write_dead_letters(out, 4, spilled=spilled)
            )
    grouped, spilled_tree = tmp_path / "grouped", tmp_path / "spilled"
    names = sorted(p.relative_to(grouped).as_posix() for p in grouped.rglob("*") if p.is_file())
    assert names == sorted(
        p.relative_to(spilled_tree).as_posix() for p in spilled_tree.rglob("*") if p.is_file()
    )
    assert len(names) == n_parts(n_rows, 5) + n_parts(n_rows, 4)
    for name in names:
        assert (grouped / name).read_bytes() == (spilled_tree / name).read_bytes(), name
    total = sum(pq.read_table(p).num_rows for p in (spilled_tree / "alps").glob("*.parquet"))
    assert total == n_rows
    assert list(folder.iterdir()) == []
