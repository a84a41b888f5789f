"""The one-line notice while kernels compile: printed on a cold numba cache, silent on a warm one."""
import os
import subprocess
import sys

from npllama.kernels.compile_notice import NOTICE

# one small kernel, called once: compiled in the first process, loaded from the cache in the second
SCRIPT = """
import numpy as np
from npllama.kernels.rmsnorm import rmsnorm_forward
rmsnorm_forward(np.ones((2, 4), np.float32), np.ones(4, np.float32), 1e-5)
"""


def run_with_cache(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    env.pop("NUMBA_DISABLE_JIT", None)
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          check=True, timeout=240).stderr


def test_notice_on_a_cold_cache_once_and_not_on_a_warm_one(tmp_path):
    cold = run_with_cache(tmp_path)
    assert cold.count(NOTICE) == 1, cold            # one line, however many kernels compiled
    warm = run_with_cache(tmp_path)
    assert NOTICE not in warm, warm


def test_compilations_outside_npllama_print_nothing(tmp_path):
    script = "from numba import njit\nimport npllama.kernels\nnjit(lambda x: x + 1)(1)\n"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    stderr = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            check=True, timeout=240).stderr
    assert NOTICE not in stderr
