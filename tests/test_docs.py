"""docs/python-api.md is a doctest: every example in it runs on the shipped examples."""

from __future__ import annotations

import doctest
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_python_api_page_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the page writes pruned.safetensors and finetuned.safetensors here
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.IGNORE_EXCEPTION_DETAIL
    result = doctest.testfile(str(DOCS / "python-api.md"), module_relative=False, optionflags=flags, verbose=False)
    assert result.attempted >= 15
    assert result.failed == 0
    assert (tmp_path / "pruned.safetensors").is_file() and (tmp_path / "finetuned.safetensors").is_file()
