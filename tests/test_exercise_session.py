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


def _defined_in_a_cell(source: str, filename: str, name: str, remembered: bool = True):
    """The function `name` of `source` as a notebook cell or a prompt defines it: its code's file
    is no file on disk (Jupyter: /tmp/ipykernel_.../<hash>.py, the Python prompt: <stdin>), and
    only Jupyter keeps the cell's lines (in linecache) for a traceback to quote."""
    import linecache

    if remembered:
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace = {"np": np}
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]


ROPE_WITH_A_TYPO = "import numpy as np\n\ndef rope_backward(dy, cache):\n    cos, sin = cache\n    return dy * cos - rotate_halff(dy * sin)\n"


@pytest.mark.parametrize("filename, remembered", [("/tmp/ipykernel_404/1234567.py", True), ("<stdin>", False)],
                         ids=["jupyter", "prompt"])
def test_a_crash_in_a_function_defined_in_a_cell_names_the_cell_and_calls_it_by_name(filename, remembered):
    """'line 5 of 1234567.py' or 'line 5 of <stdin>: ' names no file the student has, and the hint's
    runpy.run_path('<stdin>') cannot run: the line is the cell's (as Jupyter's own tracebacks count
    it), and the case is rebuilt for the function to be called in the session that defined it."""
    import linecache

    backward = _defined_in_a_cell(ROPE_WITH_A_TYPO, filename, "rope_backward", remembered)
    try:
        finding = check_function("rope", backward, n_random=0).first_failure.finding
    finally:
        linecache.cache.pop(filename, None)
    quoted = ": return dy * cos - rotate_halff(dy * sin)" if remembered else ""
    assert finding.message == ("your function raised NameError: name 'rotate_halff' is not defined (line 5 of the cell "
                               f"defining rope_backward{quoted})"), finding.message
    assert "runpy" not in finding.hint and finding.hint.endswith("\nrope_backward(dy, cache)"), finding.hint
    assert "in the session where you defined it" in finding.hint, finding.hint


def test_the_first_line_says_where_a_session_function_comes_from_without_repeating_its_name():
    from npllama.exercises import check_function
    from npllama.ops.rmsnorm import rmsnorm_backward

    def my_rms(dy, cache):
        return rmsnorm_backward(dy, cache)

    first_line = lambda fn, **kw: check_function("rmsnorm", fn, n_random=0, **kw).format().splitlines()[0]
    assert first_line(rmsnorm_backward) == "exercise rmsnorm: rmsnorm_backward"
    assert first_line(my_rms) == "exercise rmsnorm: rmsnorm_backward (your function my_rms)"
    assert first_line(lambda dy, cache: rmsnorm_backward(dy, cache)) == "exercise rmsnorm: rmsnorm_backward (a lambda)"
    assert first_line(my_rms, source="hw/rms.py") == "exercise rmsnorm: rmsnorm_backward in hw/rms.py"
