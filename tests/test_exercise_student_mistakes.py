"""What a student meets doing the exercises, each case an answer with a typical slip: the report
must say which gradient is wrong and how, never pass it, and never blame the student's code for
the checker's own trouble."""
import numpy as np

from npllama.exercises import check_function
from npllama.exercises.sandbox import grade_file

RMSNORM_RIGHT = """import numpy as np
def rmsnorm_backward(dy, cache):
    x, rstd, weight = cache
    xhat = x * rstd
    dxhat = dy * weight
    dx = rstd * (dxhat - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))
    dweight = (dy * xhat).reshape(-1, x.shape[-1]).sum(0)
    return {returned}
"""


def _rmsnorm_file(tmp_path, returned):
    path = tmp_path / "rmsnorm_backward.py"
    path.write_text(RMSNORM_RIGHT.format(returned=returned))
    return path


def test_a_list_among_the_gradients_is_named_not_reported_as_a_crash(tmp_path):
    graded = grade_file("rmsnorm", _rmsnorm_file(tmp_path, "dx.tolist(), dweight"), n_random=0)
    assert (graded.status, graded.first_failure) == ("fail", "returns"), graded.text
    assert graded.diagnosis == "dx: your function returned dx as a Python list, not a NumPy array"
    assert "raised" not in graded.text
