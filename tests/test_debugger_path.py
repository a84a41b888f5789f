"""The study path stays short: benchmarks/debugger_path.py's two figures, held to their targets."""
import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("debugger_path_script", BENCHMARKS / "debugger_path.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_a_debugger_reaches_attention_backward_within_40_calls_and_a_block_is_all_math():
    script = load_script()
    figures = script.measure(layers=1)
    assert figures["to_attention_backward"] <= 40, figures["to_attention_backward"]
    assert figures["inside_block_backward_plumbing"] <= 0.2 * figures["inside_block_backward"]
    names = [name for _, name, _ in figures["calls"][:figures["target_index"]]]
    for op in ("rmsnorm_forward", "attention_forward", "swiglu_forward", "cross_entropy_backward",
               "block_backward"):
        assert op in names, op
    assert not any(path.startswith("kernels") for path, _, _ in figures["calls"])


def test_the_count_sees_plumbing_when_there_is_some():
    # the counter must not be blind: argument checks inside the ops show up as plumbing once the
    # model lets them run
    script = load_script()
    from npllama.model import Llama

    original = Llama._check_inputs

    def checked_everywhere(self, *args, **kwargs):
        from npllama.ops._checks import checking
        checking.set(True)   # inside the public method's context: reset when it returns
        return original(self, *args, **kwargs)

    Llama._check_inputs = checked_everywhere
    try:
        figures = script.measure(layers=1)
    finally:
        Llama._check_inputs = original
    assert figures["inside_block_backward_plumbing"] > 0
    assert figures["to_attention_backward"] > 40


def test_the_number_of_calls_the_docs_give_is_what_the_script_counts():
    # a reader runs `python benchmarks/debugger_path.py --list` beside the doc and sees this number
    import re
    doc = " ".join((BENCHMARKS.parent / "docs" / "debugging.md").read_text(encoding="utf-8").split())
    readme = " ".join((BENCHMARKS.parent / "README.md").read_text(encoding="utf-8").split())
    counted = load_script().measure(layers=1)["to_attention_backward"]
    for name, text, said in (("docs/debugging.md", doc, r"reaches `ops/attention.py:attention_backward` in (\d+) calls "
                                                           r"for a one-layer model"),
                             ("README.md", readme, r"into `attention_backward` in (\d+) calls")):
        claimed = int(re.search(said, text).group(1))
        assert counted == claimed, f"{name} gives {claimed} calls; benchmarks/debugger_path.py counts {counted}"
