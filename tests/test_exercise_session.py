"""Checking a backward defined in a Python session or a Jupyter notebook (check_function), not in
a file: what the result shows when it is printed or is a cell's last expression, and how a crash
in a function that has no file on disk is located and rerun."""
import numpy as np
import pytest

from npllama.exercises import check_function



def rotate_half(a):
    half = a.shape[-1] // 2
    return np.concatenate([-a[..., half:], a[..., :half]], axis=-1)


def _layernorm_missing_the_mean_term(dy, cache):
    x, mean, rstd, weight = cache
    D = x.shape[-1]
    xhat = (x - mean) * rstd
    dxhat = dy * weight
    dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, (dy * xhat).reshape(-1, D).sum(0), dy.reshape(-1, D).sum(0)


def test_a_report_shows_itself_readably():
    """A notebook cell ending in check_function(...) shows the report; repr() is one line saying
    how many checks passed and the first failure, not the fields of a dataclass."""
    report = check_function("layernorm", _layernorm_missing_the_mean_term, n_random=1)
    assert str(report) == report.format()               # print(report) prints the report
    shown = repr(report)
    assert "\n" not in shown and "object at 0x" not in shown, shown
    assert shown.startswith("<Report exercise layernorm: _layernorm_missing_the_mean_term, 2 of 6 checks passed; "
                            "first failure gradient: dx: it is missing the term"), shown
    assert shown.endswith("; print it for the whole report>"), shown
    pretty = pytest.importorskip("IPython.lib.pretty")    # what Jupyter and IPython show for a cell's value
    assert pretty.pretty(report) == report.format()


def test_a_passing_report_says_so_in_its_repr():
    report = check_function("rope", lambda dy, cache: dy * cache[0] - rotate_half(dy * cache[1]), n_random=1)
    assert report.ok, report.format()
    assert repr(report) == "<Report exercise rope: <lambda>, 5 of 5 checks passed>"
