"""Files the tools write (tables, scripts, presets) appear whole or not at all."""

import pytest

from instantstyle.files.atomic import temp_path, write_text_atomically


def test_a_text_file_is_replaced_whole_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sheet.csv"
    path.write_text("old\n", encoding="utf-8")
    assert write_text_atomically(path, "a,b\n1,2\n") == path
    assert path.read_text(encoding="utf-8") == "a,b\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.csv"]


def test_a_failed_text_write_keeps_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "probe.md"
    path.write_text("the finished table\n", encoding="utf-8")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomically(path, "half a table \udcff")  # a lone surrogate cannot be written as UTF-8
    assert path.read_text(encoding="utf-8") == "the finished table\n"
    assert not temp_path(path).exists()
