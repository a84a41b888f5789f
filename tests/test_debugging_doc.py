"""docs/debugging.md stays true: its pdb session is replayed against the current source, and the
advice it gives (record with these patterns, then plot) works."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npllama import Llama, LlamaConfig, debug, viz

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "debugging.md").read_text(encoding="utf-8")


def squeeze(line: str) -> str:
    return " ".join(line.split())


def test_the_pdb_session_in_the_doc_is_what_pdb_prints_today(tmp_path):
    script = re.search(r"Take a script `step.py`:\n\n```python\n(.*?)```", DOC, re.S).group(1)
    session = re.search(r"```\n\$ python -m pdb step.py\n(.*?)```", DOC, re.S).group(1).splitlines()
    commands = [line[len("(Pdb) "):] for line in session if line.startswith("(Pdb) ")]
    (tmp_path / "step.py").write_text(script, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NPLLAMA_BACKEND": "numpy"}
    run = subprocess.run([sys.executable, "-m", "pdb", "step.py"], input="\n".join(commands + ["q"]) + "\n",
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    printed = run.stdout.replace(str(ROOT) + os.sep, "").replace("(Pdb) ", "\n")
    seen = {squeeze(line) for line in printed.splitlines()}
    expected = [line for line in session if not line.startswith("(Pdb) ")]
    missing = [line for line in expected if squeeze(line) not in seen]
    assert not missing, f"the doc shows lines pdb no longer prints (line numbers drifted?): {missing}"


def test_the_docs_trace_command_keeps_what_viz_grads_needs_and_a_filtered_trace_is_explained():
    line = next(line for line in DOC.splitlines() if line.startswith("npllama debug trace"))
    patterns = re.findall(r"--include '([^']+)'", line + next(
        l for l in DOC.splitlines()[DOC.splitlines().index(line) + 1:] if l.strip()))
    assert "d:model.layers.*" in patterns
    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    model = Llama(config, seed=0, dtype=np.float64)
    assert viz.grad_norms(debug.run_trace(model, [1, 2, 3], include=patterns))
    with pytest.raises(ValueError, match=r"include=\['model.layers.0.\*'\].*'d:model.layers.\*'"):
        viz.grad_norms(debug.run_trace(model, [1, 2, 3], include=["model.layers.0.*"]))
