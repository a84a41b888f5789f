"""npllama/io/reading.py: text files read line by line."""
import pytest

from npllama.io.reading import read_lines


@pytest.mark.parametrize("data", [b"one\ntwo\n", b"one\r\ntwo\r\n", b"one\rtwo\r", b"one\r\ntwo",
                                  b"\xef\xbb\xbfone\ntwo"])
def test_read_lines_gives_each_line_once_whatever_its_line_end(tmp_path, data):
    # before, a line ended by \r\n (or a last line by \r) was followed by an empty line the file does not hold
    (tmp_path / "t.txt").write_bytes(data)
    assert list(read_lines(tmp_path / "t.txt")) == ["one", "two"]


def test_read_lines_keeps_the_blank_lines_a_file_holds(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"one\r\n\r\ntwo\r\rthree\n\n")
    assert list(read_lines(tmp_path / "t.txt")) == ["one", "", "two", "", "three", ""]
