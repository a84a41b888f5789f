"""README's Python examples that stand on their own run as written (with a test model folder)."""
import re
from pathlib import Path

import pytest

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


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_python_api_op_and_gradcheck_examples_run(tmp_path, monkeypatch):
    """The "Python API" block, the op pair and the gradient checks, run in order as written: each
    defines what it uses (x, weight and targets were once left to the reader, and the whole-model
    check reused the float32 model, which gradcheck refuses).  Only the model is made small."""
    import numpy as np

    monkeypatch.chdir(tmp_path)                           # save_pretrained("my-model") writes here
    api = next(b for b in python_blocks() if "Llama(config, seed=0" in b)
    ops = next(b for b in python_blocks() if b.startswith("from npllama.ops.rmsnorm import"))
    checks = next(b for b in python_blocks() if b.startswith("from npllama import check_op, gradcheck"))
    namespace = {}
    exec(compile(api, "README Python API", "exec"), namespace)   # noqa: S102
    assert namespace["logits"].shape == (2, 16, 512) and namespace["grads"].keys() == namespace["model"].params.keys()
    assert (tmp_path / "my-model" / "config.json").is_file() and len(namespace["ids"]) == 3 + 20
    exec(compile(ops, "README ops", "exec"), namespace)   # noqa: S102
    assert namespace["dx"].shape == namespace["x"].shape and namespace["dweight"].shape == namespace["weight"].shape
    small = namespace["LlamaConfig"](vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    namespace.update(config=small, tokens=np.random.default_rng(0).integers(0, 11, (2, 6)))
    exec(compile(checks, "README gradcheck", "exec"), namespace)   # noqa: S102
    assert namespace["report"].ok and namespace["model"].params["lm_head.weight"].dtype == np.float64
    # "Debugging and the classroom" goes on with that model: its compare once named traces t_a and
    # t_b that no line made, so the block stopped at a NameError when copied as written.  It plants
    # a bug in one run, and the compare must find it where it is: the gradient the first RMSNorm
    # backward (the final norm's) returns, computed by the planted function, nothing before it.
    debugging = next(b for b in python_blocks() if b.startswith("import npllama\nwith npllama.trace()"))
    exec(compile(debugging, "README debugging", "exec"), namespace)   # noqa: S102
    assert namespace["t"]["model.layers.0.self_attn.attn_probs"].shape == (2, 2, 5, 5)
    report = namespace["report"]
    assert report.first is not None and report.first.name == "d:model.layers.0.out", str(report)
    assert "planted (in a)" in str(report), str(report)


def own_loop_section() -> str:
    """README's "Your own training loop" section, up to the next heading."""
    return README.read_text(encoding="utf-8").split("## Your own training loop", 1)[1].split("\n## ", 1)[0]


def test_the_own_training_loop_resumes_exactly_and_gives_npllama_trains_losses(tmp_path, monkeypatch):
    """"Your own training loop": the loop runs as written; resuming from its step-10 checkpoint gives
    the uninterrupted losses exactly; and the `npllama train` command the text calls the same run
    logs the same losses (float32: to round-off, the CLI may run the NumPy reference meanwhile)."""
    import json
    import shlex
    import subprocess
    import sys

    import numpy as np

    monkeypatch.chdir(tmp_path)
    section = own_loop_section()
    loop, resume = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    namespace = {}
    exec(compile(loop, "README own loop", "exec"), namespace)   # noqa: S102
    losses = list(namespace["losses"])
    assert len(losses) == 12 and losses[-1] < losses[0] and np.isfinite(namespace["val_loss"])
    exec(compile(resume, "README resume", "exec"), namespace)   # noqa: S102
    assert namespace["resumed"] == losses[10:]

    command = re.search(r"This is `(npllama train .*?)`", section, flags=re.S).group(1)
    Path("my.txt").write_text("\n\n".join(namespace["texts"]) + "\n", encoding="utf-8")
    Path("config.json").write_text(json.dumps(namespace["config"].to_dict()), encoding="utf-8")
    args = shlex.split(command)[2:] + ["--out", "run", "--samples", "0", "--no-progress", "--threads", "1"]
    subprocess.run([sys.executable, "-m", "npllama", "train", *args], check=True, capture_output=True)
    logged = [json.loads(line) for line in Path("run/log.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([r["loss"] for r in logged if "loss" in r], losses, rtol=1e-5)
    assert [r["val_loss"] for r in logged if "val_loss" in r][-1] == pytest.approx(namespace["val_loss"], rel=1e-5)


def test_the_adamw_defaults_the_readme_says_differ_from_torchs_are_those_that_do():
    """'Your own training loop' names each AdamW default that differs from torch.optim.AdamW's,
    with both values (it once said two differ, leaving out lr)."""
    import ast
    import inspect

    torch = pytest.importorskip("torch")
    from npllama.optim import AdamW

    ours, theirs = (inspect.signature(cls.__init__).parameters for cls in (AdamW, torch.optim.AdamW))
    differ = {name for name in ("lr", "betas", "eps", "weight_decay") if ours[name].default != theirs[name].default}
    section = own_loop_section()
    said = re.search(r"of AdamW's defaults differ\s+from torch's: (.*?);", section, flags=re.S).group(1)
    words = {"lr": "lr", "betas": "betas", "eps": "eps", "weight decay": "weight_decay"}
    pairs = re.findall(r"(lr|betas|eps|weight decay) (\S+|\(.*?\)) \(torch (\S+|\(.*?\))\)", " ".join(said.split()))
    stated = {words[word]: (ast.literal_eval(a), ast.literal_eval(b)) for word, a, b in pairs}
    assert stated == {name: (ours[name].default, theirs[name].default) for name in differ}, said


def test_the_quick_start_quotes_what_a_second_npllama_train_says():
    """Quick start: running its line twice stops at `npllama train`, whose refusal the text quotes;
    the quote and the default run folder it names are the code's."""
    from npllama.resuming import already_holds_a_run
    from npllama.train import TrainConfig

    quick_start = " ".join(README.read_text(encoding="utf-8").split("## Quick start", 1)[1].split("\n## ", 1)[0].split())
    assert TrainConfig().out == "runs/tiny" and "The run goes to `runs/tiny`" in quick_start
    assert f'("{already_holds_a_run(TrainConfig().out)}")' in quick_start


def test_every_extra_the_docs_install_is_installed_from_the_checkout_and_exists():
    """README and docs/ install extras as the quick start installs npllama, from the checkout
    (`pip install -e '.[gguf]'`): `pip install 'npllama[gguf]'` would look for npllama on the
    package index wherever npllama was not installed yet.  Each extra named is one pyproject.toml
    declares."""
    tomllib = pytest.importorskip("tomllib")   # Python 3.11+
    root = README.parent
    extras = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    named = []
    for doc in [README, *sorted((root / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        assert not re.findall(r"pip install[^`\n]*npllama\[", text), doc.name
        named += [(doc.name, e) for group in re.findall(r"pip install -e '\.\[([^\]]*)\]'", text) for e in group.split(",")]
    assert len(named) >= 8 and {e for _, e in named} <= set(extras), [n for n in named if n[1] not in extras]


def test_the_corpus_files_the_readme_has_a_newcomer_write_are_written_and_held_out_is_new(tmp_path):
    """"When one CPU is not enough" and the fine-tuning section read `stories.txt` and `held_out.txt`;
    the README gives the line that writes each (a newcomer had no such file).  Each runs as written,
    and the held-out stories are none of the corpus `npllama train` trains on, as the README says."""
    import shlex
    import subprocess
    import sys

    from npllama.corpus import make_default_corpus
    from npllama.data import load_texts

    lines = {m.group(1): m.group(0) for m in re.finditer(
        r"""python -c "[^"]*write_default_corpus\('([\w.]+)'[^"]*\)\"""", README.read_text(encoding="utf-8"))}
    assert set(lines) == {"stories.txt", "held_out.txt"}, lines
    for name, line in lines.items():
        argv = shlex.split(line)
        subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, check=True, timeout=120)
        assert (tmp_path / name).is_file()
    stories = load_texts(tmp_path / "stories.txt")
    held_out = load_texts(tmp_path / "held_out.txt")
    assert stories == make_default_corpus() and len(held_out) == 200
    assert not set(held_out) & set(stories)


def test_the_defaults_the_readme_gives_for_hf_train_and_the_fine_tunes_are_the_parsers():
    """"When one CPU is not enough" gives hf_train's --seq-len and --lr and says --batch-size counts
    per process; the fine-tuning section says each fine-tune runs 200 steps.  Each is what the code
    takes without the flag, so a changed default cannot leave the README behind."""
    from npllama.finetune import ClassifyConfig, SFTConfig
    from npllama.finetune_sop import SentenceOrderConfig
    from npllama.hf_train import build_parser as hf_train_parser

    text = " ".join(README.read_text(encoding="utf-8").split())
    hf = {action.dest: action for action in hf_train_parser()._actions}
    assert int(re.search(r"`--seq-len` \((\d+)\) tokens a step", text).group(1)) == hf["seq_len"].default
    assert float(re.search(r"`--lr` \(([\d.e+-]+)\)", text).group(1)) == hf["lr"].default
    assert "every process `--batch-size` sequences" in text and "per process" in hf["batch_size"].help

    steps = int(re.search(r"Each runs (\d+) steps unless `--steps` says otherwise", text).group(1))
    for job, settings in (("classify", ClassifyConfig), ("sft", SFTConfig), ("sop", SentenceOrderConfig)):
        assert settings().steps == steps, job   # what a run without --steps takes (the parser leaves it out)

