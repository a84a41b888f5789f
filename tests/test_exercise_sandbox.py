"""The grade is computed where the submission's code never runs (sandbox.py): with the import rule
switched off (allow_imports, only the run-time guard left), a submission that patches the runner,
makes NumPy lie, or forges the report itself is still graded on what its function returns.  The
class below is graded once (one process per file, two at a time) and each test reads its row."""
import pytest

from npllama.exercises.gradebook import grade_folder
from npllama.exercises.planted import CORRECT
from npllama.exercises.sandbox import grade_file
from tests.test_exercise_grading import FINITE_DIFFERENCES

ZEROS = '''

def rmsnorm_backward(dy, cache):
    x, rstd, weight = cache
    return np.zeros_like(x), np.zeros_like(weight)
'''

CLASS = {
    # the runner, reached through sys.modules, told that every report passes
    "patches_the_runner.py": '''import sys
import numpy as np

R = sys.modules["npllama.exercises.runner"]
R.Report.ok = property(lambda self: True)
R.Report.passed = property(lambda self: self.total)
R.Report.first_failure = property(lambda self: None)
''' + ZEROS,
    # the checker's comparisons made to lie: every array "all true", every largest entry 0 (so every
    # norm and every relative error is 0)
    "numpy_lies.py": '''import numpy as np

np.all = lambda *args, **kwargs: True
np.max = lambda *args, **kwargs: 0.0
np.allclose = lambda *args, **kwargs: True
''' + ZEROS,
    # the report's token found among the process's objects (or up the stack) and a passing report
    # written where the report goes, before leaving
    "forges_the_report.py": '''import gc
import json
import os
import re
import sys

import numpy as np


def _token():
    for o in gc.get_objects():
        for r in gc.get_referents(o):
            if isinstance(r, str) and re.fullmatch(r"[0-9a-f]{32}", r):
                return r
    frame = sys._getframe()
    while frame is not None:
        if isinstance(frame.f_locals.get("token"), str):
            return frame.f_locals["token"]
        frame = frame.f_back
    return None


token, report = _token(), next((a for a in sys.argv if a.endswith(".json")), None)
if token and report:
    with open(report, "w") as f:
        json.dump({"token": token, "ok": True, "passed": 4, "total": 4, "text": "forged"}, f)
    os._exit(0)
''' + ZEROS,
    "too_large.py": '''import numpy as np


def rmsnorm_backward(dy, cache):
    return np.zeros(3_000_000), np.zeros(4)      # 24 MB
''',
    # an object that would write a file if the grader unpickled it
    "own_class.py": '''import os


class Gradient:
    def __reduce__(self):
        return (os.mkdir, (os.path.join(os.path.dirname(os.path.abspath(__file__)), "unpickled"),))


def rmsnorm_backward(dy, cache):
    return Gradient(), Gradient()
''',
    # right for the first calls, then gone in the middle of the gradient check
    "exits_half_way.py": CORRECT["rmsnorm"] + '''

import os

_right, _calls = rmsnorm_backward, [0]


def rmsnorm_backward(dy, cache):
    _calls[0] += 1
    if _calls[0] > 5:
        os._exit(1)
    return _right(dy, cache)
''',
    # what the checks read off the function's process: a change of the cache, a crash's own line
    "changes_the_cache.py": '''import numpy as np


def rmsnorm_backward(dy, cache):
    x, rstd, weight = cache
    x *= 2
    return np.zeros_like(x), np.zeros_like(weight)
''',
    # finite differences of a forward of its own, and the evidence wiped from the file as it loads
    "rewrites_itself.py": "open(__file__, 'w').write('# nothing to see here\\n')\n" + FINITE_DIFFERENCES,
    # a reply of its own before the "ready", with an array shape NumPy refuses
    "writes_its_own_reply.py": '''import json, os, struct, sys

_header = json.dumps({"kind": "ready", "arrays": [["<f8", [1] * 65]]}).encode()
os.write(int(sys.argv[sys.argv.index("--reply-fd") + 1]), struct.pack("<Q", len(_header)) + _header + bytes(8))
''' + ZEROS,
    # the reply that stops the grading of a whole class (a teacher's file the process cannot load),
    # written to the grader's pipe as the file loads
    "forges_an_exercise_error.py": '''import json
import os
import struct
import sys

fd = int(sys.argv[sys.argv.index("--reply-fd") + 1])
body = json.dumps({"kind": "exercise_error", "text": "forged", "arrays": []}).encode()
os.write(fd, struct.pack("<Q", len(body)) + body)
''' + ZEROS,
    "einsum_crash.py": '''import numpy as np


def rmsnorm_backward(dy, cache):
    x, rstd, weight = cache
    return np.einsum("ij,jk->ik", dy, x), weight
''',
}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("class")
    for name, source in CLASS.items():
        (folder / name).write_text(source)
    graded = grade_folder("rmsnorm", folder, n_random=0, timeout=60, allow_imports=True)
    return {g.file: g for g in graded}, folder


@pytest.mark.parametrize("name", ["patches_the_runner.py", "numpy_lies.py", "forges_the_report.py"])
def test_a_submission_cannot_change_its_grade_from_its_own_process(rows, name):
    graded = rows[0][name]
    assert graded.status == "fail" and graded.passed < graded.total, graded.text
    assert graded.first_failure == "gradient" and "every entry is 0" in graded.diagnosis


def test_a_reply_too_large_is_a_failed_check(rows):
    graded = rows[0]["too_large.py"]
    assert graded.status == "fail" and graded.first_failure == "returns"
    assert "22.9 MB of arrays (at most 16.0 MB come back)" in graded.diagnosis


def test_an_object_of_the_students_class_is_described_not_unpickled(rows):
    graded, folder = rows[0]["own_class.py"], rows[1]
    assert graded.status == "fail" and "not an array of numbers (got Gradient)" in graded.diagnosis
    assert not (folder / "unpickled").exists()


def test_checks_passed_before_a_crash_are_kept(rows):
    graded = rows[0]["exits_half_way.py"]
    assert graded.status == "crashed" and "exit status 1" in graded.diagnosis
    assert (graded.passed, graded.first_failure) == (1, "gradient")
    assert "PASS  returns" in graded.text and "ERROR gradient" in graded.text


def test_a_reply_that_is_not_one_is_a_crashed_row_not_a_grader_error(rows):
    graded = rows[0]["writes_its_own_reply.py"]
    assert graded.status == "crashed" and "not a reply" in graded.diagnosis, graded.diagnosis


def test_what_the_function_did_in_its_process_is_diagnosed_as_in_this_one(rows):
    assert rows[0]["changes_the_cache.py"].diagnosis == "your function changed cache.x in place"
    einsum = rows[0]["einsum_crash.py"]
    assert 'line 6 of einsum_crash.py: return np.einsum("ij,jk->ik", dy, x), weight' in einsum.diagnosis
    # "ij" given the case's 3-axis dy: the hint names the count of axes, as in the student's own process
    assert "an einsum operand has another number of axes than its subscripts have letters" in einsum.text


def test_a_reply_only_the_childs_own_code_may_send_is_no_reply_from_the_submission(rows):
    graded = rows[0]["forges_an_exercise_error.py"]     # and the class's other files were graded
    assert graded.status == "crashed" and "not a reply" in graded.diagnosis, graded.text


def test_a_file_that_rewrites_itself_is_judged_by_what_it_was(rows):
    graded = rows[0]["rewrites_itself.py"]
    assert graded.status == "refused" and "finite differences" in graded.diagnosis


def test_warnings_a_check_silences_are_silenced_in_the_functions_process(tmp_path):
    """The large-inputs check judges values only (np.errstate(all="ignore") around the call): an exp
    that overflows on the way to the right dgate is not output of the student's."""
    path = tmp_path / "silu_with_exp.py"
    path.write_text("import numpy as np\n\n\ndef swiglu_act_backward(dact, cache):\n"
                    "    s = 1 / (1 + np.exp(-cache.gate))\n"
                    "    dgate = dact * cache.up * (s + cache.gate * s * (1 - s))\n"
                    "    return dgate, dact * cache.gate * s\n")
    graded = grade_file("swiglu_act", path, n_random=0)
    assert graded.ok and graded.output == "", graded.output


def test_a_grader_with_more_than_1024_files_open_still_grades(tmp_path):
    """The pipes to the child then get descriptors above 1023, which select() refuses."""
    import os

    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1100 if hard == resource.RLIM_INFINITY else min(hard, 1100)
    if wanted < 1100:
        pytest.skip("this system allows fewer than 1100 open files")
    path = tmp_path / "right.py"
    path.write_text(CORRECT["rmsnorm"])
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    held = []
    try:
        while len(held) < 1030:
            held.append(os.open(os.devnull, os.O_RDONLY))
        graded = grade_file("rmsnorm", path, n_random=0, timeout=60)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert graded.ok, graded.text


def test_the_grader_reads_no_path_that_is_not_a_file_nor_one_larger_than_a_submission(tmp_path):
    """The grader reads the text itself (screen.py's rules), without the child's limits: a named
    pipe must not block it (reading one waits for a writer forever) nor a huge file fill its memory."""
    import os
    import threading

    from npllama.exercises.runner import MAX_SOURCE_BYTES

    big = tmp_path / "big.py"
    with open(big, "wb") as f:
        f.truncate(MAX_SOURCE_BYTES + 1)     # sparse: no disk used
    graded = grade_file("rmsnorm", big, n_random=0)
    assert graded.status == "unusable" and "larger than a submission" in graded.diagnosis, graded.diagnosis
    if not hasattr(os, "mkfifo"):
        return
    os.mkfifo(tmp_path / "pipe.py")
    rows = []
    grading = threading.Thread(target=lambda: rows.append(grade_file("rmsnorm", tmp_path / "pipe.py", n_random=0,
                                                                      timeout=10)), daemon=True)
    grading.start()
    grading.join(60)                          # not a speed limit: without the fix it never ends
    assert not grading.is_alive() and rows[0].status in ("unusable", "timeout"), rows


def test_a_timeout_longer_than_poll_waits_is_waited_in_pieces(tmp_path):
    """poll() takes at most 2**31 - 1 ms (24.8 days); a longer timeout is the grader's to give."""
    path = tmp_path / "right.py"
    path.write_text(CORRECT["rmsnorm"])
    assert grade_file("rmsnorm", path, n_random=0, timeout=3e6).ok


def test_an_argument_the_grader_holds_read_only_is_read_only_in_the_submissions_process():
    """pickle does not carry an array's writeable flag: the child sets it again, so a student's
    in-place write to an array the check handed over read-only raises there as it would here."""
    import numpy as np

    from npllama.exercises.sandbox import _served_call

    def writes_in_place(dy, cache):
        dy[0] = 1.0
        return dy

    header, _ = _served_call(writes_in_place, (np.zeros(2), np.ones(2)), {}, [0], np.geterr())
    assert header["kind"] == "raise" and "read-only" in header["text"]
    header, arrays = _served_call(writes_in_place, (np.zeros(2), np.ones(2)), {}, [], np.geterr())
    assert header["kind"] == "return" and [leaf for leaf, _ in header["changed"]] == [0]
