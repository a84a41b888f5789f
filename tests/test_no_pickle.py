"""No pickle anywhere, and no file content ever run as code: enforced over the source itself.

Loading a checkpoint someone else made must never execute code they chose.  Pickle (and what is
built on it: torch.load, np.load with allow_pickle, joblib, shelve, dill, marshal) can, and so can
eval/exec.  The rules, checked on the syntax tree of every Python file:

    npllama/ (what users run)   no import of pickle-like modules; no eval / exec / compile;
                                no yaml.load; no torch.load.  One exception, by name
                                (PICKLE_BETWEEN_PROCESSES): the grading sandbox's child
                                unpickles the calls its own parent, the grader, writes to its
                                stdin -- never a file, never the submission's bytes (the grader
                                reads the child's answers as wire.py's frames, never pickles)
    everywhere (tests, benchmarks too)
                                every np.load / numpy.load passes allow_pickle=False explicitly;
                                nothing passes allow_pickle=True, weights_only=False or
                                trust_remote_code=True
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "npllama"
EVERYWHERE = [p for folder in ("npllama", "tests", "benchmarks", "scripts", "examples")
              for p in sorted((ROOT / folder).rglob("*.py"))]

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
CODE_RUNNERS = {"eval", "exec", "compile", "__import__"}
UNSAFE_KEYWORDS = {("allow_pickle", True), ("weights_only", False), ("trust_remote_code", True)}
# file -> the one function in it that may call pickle.loads (None: none may); pickle.dumps is allowed there
PICKLE_BETWEEN_PROCESSES = {"npllama/exercises/sandbox.py": "_read_request",   # the child reads its parent's calls
                            "npllama/exercises/teacher.py": None}              # can a cache travel to the child?


def dotted(node) -> str:
    """'np.load' for np.load, 'torch.load' for torch.load, '' for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def calls(tree):
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def where(path, node) -> str:
    label = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    return f"{label}:{node.lineno}"


def parse(path):
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def package_problems(path) -> list[str]:
    """Pickle-like imports, eval/exec/compile, torch.load, yaml.load."""
    tree = parse(path)
    problems = []
    relative = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    if relative in PICKLE_BETWEEN_PROCESSES:
        return _between_processes_problems(path, tree, PICKLE_BETWEEN_PROCESSES[relative])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            problems += [f"{where(path, node)}: import {a.name}" for a in node.names
                         if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            problems.append(f"{where(path, node)}: from {node.module} import ...")
    for call in calls(tree):
        name = dotted(call.func)
        if name in CODE_RUNNERS or name.endswith("torch.load") or name == "yaml.load":
            problems.append(f"{where(path, call)}: {name}(...)")
    return problems


def _between_processes_problems(path, tree, loader) -> list[str]:
    """A PICKLE_BETWEEN_PROCESSES file: `import pickle` and pickle.dumps, pickle.loads only in
    `loader`, and nothing else of the usual rule's."""
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):    # `import pickle as pk` would hide pk.loads from the rule below
            problems += [f"{where(path, node)}: import {a.name}" + (f" as {a.asname}" if a.asname else "")
                         for a in node.names if a.name.split(".")[0] in PICKLE_MODULES
                         and (a.name != "pickle" or a.asname is not None)]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            problems.append(f"{where(path, node)}: from {node.module} import ...")
    allowed_loads = set()
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef) and function.name == loader:
            allowed_loads |= {id(node) for node in ast.walk(function)}
    for call in calls(tree):
        name = dotted(call.func)
        if name in CODE_RUNNERS or name.endswith("torch.load") or name == "yaml.load":
            problems.append(f"{where(path, call)}: {name}(...)")
    # every use of pickle's names, called or not (`unpickle = pickle.loads` is one too)
    for node in ast.walk(tree):
        name = dotted(node) if isinstance(node, ast.Attribute) else ""
        if name.startswith("pickle.") and name != "pickle.dumps" and not (
                name == "pickle.loads" and id(node) in allowed_loads):
            problems.append(f"{where(path, node)}: {name}(...) outside {loader or 'any function'}")
    return problems


def test_pickle_between_processes_is_held_to_its_one_loader(tmp_path):
    """The exception's own rule can fail: a pickle.load(s) anywhere else, or another pickle-like
    module, in one of those files is a problem."""
    (tmp_path / "f.py").write_text("import pickle, marshal\nimport pickle as pk\n"
                                   "def _read_request(s):\n    return pickle.loads(s)\n"
                                   "def elsewhere(s):\n    return pickle.loads(s), pickle.dumps(s), pickle.load(s)\n"
                                   "unpickle = pickle.loads\n")
    problems = _between_processes_problems(tmp_path / "f.py", parse(tmp_path / "f.py"), "_read_request")
    assert sorted(p.split(": ", 1)[1] for p in problems) == sorted([
        "import marshal", "import pickle as pk", "pickle.loads(...) outside _read_request",
        "pickle.load(...) outside _read_request", "pickle.loads(...) outside _read_request"])
    assert set(PICKLE_BETWEEN_PROCESSES) <= {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")}


def np_load_problems(path) -> list[str]:
    """np.load without an explicit allow_pickle=False; allow_pickle=True and friends anywhere."""
    problems = []
    for call in calls(parse(path)):
        name = dotted(call.func)
        keywords = {k.arg: k.value for k in call.keywords}
        if name in ("np.load", "numpy.load"):
            flag = keywords.get("allow_pickle")
            if not (isinstance(flag, ast.Constant) and flag.value is False):
                problems.append(f"{where(path, call)}: {name} without allow_pickle=False")
        for arg, value in keywords.items():
            if isinstance(value, ast.Constant) and (arg, value.value) in UNSAFE_KEYWORDS:
                problems.append(f"{where(path, call)}: {arg}={value.value!r}")
    return problems


def test_the_scan_sees_the_source():
    assert len(EVERYWHERE) > 30 and (PACKAGE / "io" / "safetensors.py") in EVERYWHERE


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_package_never_unpickles_or_runs_file_content(path):
    problems = package_problems(path)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", EVERYWHERE, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_np_load_refuses_pickles(path):
    problems = np_load_problems(path)
    assert not problems, "\n".join(problems)


def test_the_scanner_catches_what_it_should(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy as np\nimport pickle\nfrom joblib import load\n"
                   "x = np.load('a.npy')\ny = numpy.load('b', allow_pickle=True)\nz = np.load('c', allow_pickle=False)\n"
                   "eval(open('f').read())\nexec(src)\nstate = torch.load('w.pt', weights_only=False)\n"
                   "m = AutoModel.from_pretrained('x', trust_remote_code=True)\n")
    assert len(package_problems(bad)) == 5       # pickle, joblib, eval, exec, torch.load
    assert len(np_load_problems(bad)) == 5       # 2 np.load without False, allow_pickle=True, weights_only, trust_remote_code
