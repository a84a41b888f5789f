"""README's Python examples that stand on their own run as written (with a test model folder)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_sentence_order_example_trains_both_heads(small_model_dir):
    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
                 if "mlm_sop_loss_and_grads" in b)
    assert '"runs/mlm"' in block
    namespace = {}
    exec(compile(block.replace('"runs/mlm"', repr(str(small_model_dir))), "README sentence-order", "exec"),
         namespace)   # noqa: S102
    assert set(namespace["parts"]) == {"mlm", "sop"} and namespace["optimizer"].step_count == 30
