"""README's Python examples that stand on their own run as written (with a test model folder)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_sentence_order_example_trains_and_scores_a_pair(small_model_dir, tmp_path):
    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
                 if "sentence_order(" in b)
    assert '"runs/mlm"' in block and block.count('"runs/sop"') == 2 and "steps=30," in block
    code = block.replace('"runs/mlm"', repr(str(small_model_dir))).replace('"runs/sop"', repr(str(tmp_path / "sop")))
    code = code.replace("steps=30,", "steps=3, stories=100, max_len=48, progress=False,")  # small, quiet
    namespace = {}
    exec(compile(code, "README sentence-order", "exec"), namespace)   # noqa: S102
    assert len(namespace["result"].losses) == 3 and namespace["head"].shape == (2, namespace["model"].config.hidden_size)
    assert (tmp_path / "sop" / "sop_head.safetensors").is_file()
