"""Terminal columns: what tables holding the user's words pad by."""
from npllama.text_width import ljust, rjust, width


def test_wide_characters_take_two_columns_and_combining_marks_none():
    assert width("abc") == 3
    assert width("正面") == 4 and width("ＡＢＣ") == 6 and width("😀") == 2 and width("かな") == 4
    assert width("e\u0301") == 1              # e + combining acute accent: one column
    assert ljust("正面", 7) == "正面   " and rjust("正面", 7) == "   正面"
    assert ljust("neutral", 4) == "neutral"   # too wide: left as it is
