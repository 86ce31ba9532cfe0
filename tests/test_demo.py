"""The main job: a fresh run prints the same table twice, and --check compares it with the committed doc."""

from __future__ import annotations

import pytest

from monai_tta.demo import main, table_of


@pytest.mark.integration
def test_fresh_runs_print_the_same_table_and_check_compares_it_with_the_doc(tmp_path, capsys):
    args = ["--fresh", "--methods", "SourceOnly", "TENT", "--num-per-domain", "2", "--image-size", "32"]
    args += ["--source-epochs", "1", "--results-dir", str(tmp_path)]
    assert main(args) == 0
    doc = (tmp_path / "main_job.md").read_text()
    table = table_of(doc)
    assert table.startswith("| method |") and "| TENT |" in table and "Torch CPU threads: 1" in doc
    assert main([*args, "--check"]) == 0  # data generated and source trained again from scratch: the same table
    assert "the same table" in capsys.readouterr().out
    assert (tmp_path / "main_job.md").read_text() == doc  # --check writes nothing


def test_table_of_takes_the_first_table_only():
    doc = "# t\n\ntext | not a row\n| a | b |\n|---|---|\n| x | 1.00 |\n\nmore\n"
    assert table_of(doc) == "| a | b |\n|---|---|\n| x | 1.00 |"
