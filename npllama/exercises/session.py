"""What a Jupyter kernel's (or an IPython prompt's) state says about the function check_function is
given there: a notebook's check cell grades whatever the kernel holds under the name, which need
not be the code the student last ran.

- A definition cell that failed before its `def` ran (a syntax error, an import error above it)
  leaves the kernel holding the function an earlier cell defined: checking that one would grade
  code the student has replaced (a right answer edited into a wrong one still said "Well done!").
  The same holds for a helper the function calls from another cell: the checked function is
  graded with the helper the kernel holds (a function, a class's methods, the function a
  functools.partial holds, a callable object's class).  A builtin or a numpy ufunc no cell
  defines, whose name a later cell failed to define: which one was meant cannot be told (UNSURE).
  How a later cell binds the name decides (_replaced): a def, a lambda, or an alias to a function
  unchanged since would have replaced the function had the cell run that line -- no verdict
  (STALE); an import, a call's result, or an alias to a name rebound since may have given the
  same function back -- graded, with a note saying so (UNSURE).  A cell known to have ended
  without an error (watch_cells) replaced nothing it did not replace: a def there that did not
  take effect sat in a branch not taken.  A %%time cell's body counts as the cell: a function it
  defines (code of the file '<timed exec>', whose lines no cache keeps) is matched to its def by
  the body's syntax tree; %%time may catch the body's error and end the cell without one, so a
  %%time cell that ended well is not known to have run all its code.
- `from npllama.ops.softmax import softmax_backward` in a cell makes the library's own backward
  the one checked: it is not the student's; nor is a teacher's reference imported from the
  exercise's file (librarys_own).

Outside IPython (a script, pytest, the grading sandbox) there is no such state: nothing is said.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import dis
import functools
import inspect
import io
import linecache
import sys
import tokenize
import weakref
from pathlib import Path

# where the ops a student writes live: the op modules, their kernels, the assembled block and model
LIBRARY_CODE = ("npllama.ops.", "npllama.kernels", "npllama.model")


def _shell():
    """The running IPython shell, or None (IPython is never imported here: a script has none)."""
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None


def _history() -> list[str]:
    """The cells run so far, In[n] at index n (the session's shell must be running)."""
    return _shell().history_manager.input_hist_parsed


def _cell_source(function) -> str:
    code = getattr(function, "__code__", None)
    return "".join(linecache.getlines(code.co_filename)).rstrip() if code is not None else ""


def _cells_defining(function) -> list[int]:
    """The numbers n of the cells In[n] whose code `function` is (a cell run twice is both); [] outside
    a session, or for a function no cell typed (imported from a file, exec'd text, npllama's own)."""
    if _shell() is None:
        return []
    code = getattr(function, "__code__", None)
    if code is not None and code.co_filename == TIMED:       # no lines kept to compare: the body's syntax tree
        return [n for n, cell in enumerate(_history()) if any(_is_code_of(node, code) for node in _timed_defs(cell))]
    source = _cell_source(function)
    return [n for n, cell in enumerate(_history()) if source and cell.rstrip() == source]


# the file %%time runs its cell's body as, whichever the cell (linecache keeps none of its lines)
TIMED = "<timed exec>"


def _timed_body(cell: str) -> str | None:
    """A %%time cell's body as Python; None for another cell."""
    body = _timed_text(cell)
    return None if body is None else _shell().transform_cell(body)     # as %%time reads it (its lines are the code's)


def _timed_text(cell: str) -> str | None:
    """A %%time cell's body as typed, from its history's text `get_ipython().run_cell_magic('time',
    line, body)`; None for another cell."""
    if "run_cell_magic" not in cell:        # most cells: nothing to parse
        return None
    statements = _parsed(cell)
    only = statements[0] if statements is not None and len(statements) == 1 else None
    call = only.value if isinstance(only, ast.Expr) else None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "run_cell_magic"
            and len(call.args) == 3 and all(isinstance(arg, ast.Constant) for arg in call.args)
            and call.args[0].value == "time" and isinstance(call.args[2].value, str)):
        return None
    return call.args[2].value


def _timed_defs(cell: str) -> list:
    """The defs and lambdas of a %%time cell's body, at any depth; [] for another cell, or a body
    that does not parse."""
    body = _timed_body(cell)
    statements = _parsed(body) if body is not None else None
    return [node for statement in statements or [] for node in ast.walk(statement)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]


def _is_code_of(node, code) -> bool:
    """Whether `code` is the code the def or lambda `node` makes: the same name, first line (a
    decorated def's is its first decorator's), parameters, and every line of its own code within
    the node's."""
    name = "<lambda>" if isinstance(node, ast.Lambda) else node.name
    first = min([node.lineno] + [decorator.lineno for decorator in getattr(node, "decorator_list", [])])
    arguments = node.args
    parameters = [a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                                  *filter(None, [arguments.vararg, arguments.kwarg])]]
    count = (code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & inspect.CO_VARARGS)
             + bool(code.co_flags & inspect.CO_VARKEYWORDS))
    lines = {line for *_, line in code.co_lines() if line is not None}
    return (name == code.co_name and first == code.co_firstlineno and parameters == list(code.co_varnames[:count])
            and all(first <= line <= node.end_lineno for line in lines))


def students_code(function, exercise) -> bool:
    """Whether `function` is the student's code run in this session -- typed in a cell, or from a
    module of their own (%%writefile, then imported): it shares the kernel with the checker, and
    what it calls of npllama's is refused as check_file refuses it (guard_library).  npllama's own
    code (the sandbox's stand-in for a file graded from the kernel) and the exercise's own file (a
    teacher's reference, which may call npllama's forward: the rule is for students) call it knowingly."""
    module = getattr(function, "__module__", None) or ""
    return (_shell() is not None and function is not None and not module.startswith("npllama.")
            and module != exercise.module)


def librarys_own(function, exercise) -> str | None:
    """Why `function`, given in a session, is not the student's (None otherwise): one of the model's
    own ops given to a built-in exercise (the backward to write, or any other); or a teacher's
    reference, imported by a cell from the exercise's file (`from x_exercise import x_backward`)
    and checked, or called by the function checked.  A teacher checking the reference names it
    through the exercise (exercise.reference, verify_reference), not a name of the notebook's --
    and a teacher's exercise may be a variant of an op whose reference is npllama's own, which its
    checks run knowingly."""
    if _shell() is None:
        return None
    module = getattr(function, "__module__", None) or ""
    if exercise.builtin and module.startswith(LIBRARY_CODE):
        return (f"{function.__name__} here is npllama's own, from {module} (a cell imported it), not yours: "
                f"define {exercise.backward_name} in the exercise's cell, run that cell, then check again")
    for held, path, calls in _definitions_used(function, exercise):
        if (exercise.exercise_file and inspect.isfunction(held)
                and _code_file(held) == Path(exercise.exercise_file).resolve()):
            name = ".".join(path)
            what = f"your {function.__name__} calls {name}, which is" if calls else f"{name} here is"
            return (f"{what} the exercise's reference {held.__name__}, from {Path(exercise.exercise_file).name} "
                    f"(a cell imported it), not yours: write {exercise.backward_name} yourself, run its cell, "
                    f"then check again")
    return None


def _code_file(function) -> Path:
    return Path(function.__code__.co_filename).resolve()


def replaced_definitions(function, exercise) -> tuple[str | None, list[str]]:
    """What the kernel holds, against what the student last ran: (why the check would grade code
    the student has replaced -- no verdict then --, or None; what cannot be told, for the report's
    notes).  Both the checked function and the helpers it calls from the notebook (functions and
    classes its code names, and theirs in turn) are looked at: a helper a later cell failed to
    redefine changes the result as much as the function itself.  Nothing outside a session."""
    if _shell() is None:
        return None, []
    watch_cells()
    doubts = []
    for held, path, calls in _definitions_used(function, exercise):
        verdict, cell, later = _replaced(held, path)
        name = ".".join(path)
        if verdict == STALE:
            through = (f"your {function.__name__} calls {name}, and " if calls else "")
            if _cells_ran_to_the_end().get(later) is False:        # it stopped with an error: watched since
                why, replaced = "stopped before that line ran (see that cell's error)", "you have replaced"
                way_out = "fix that cell, run it"
            else:       # run before watch_cells, or a %%time cell that ended well (its body's error caught):
                        # it may also have ended well, not taking a branch holding the def
                why = ("did not run that line: it stopped before it (see that cell's error), or it sits in a "
                       "branch the cell did not take")
                replaced = "you may have replaced"
                way_out = f"fix that cell and run it, or run again the cell defining the {name} you mean (In[{cell}])"
            grades = f"your function with the {name} {replaced}" if calls else f"code {replaced}"
            return (f"{through}the {name} the kernel holds is the one cell In[{cell}] defined, but cell In[{later}], "
                    f"run after it, defines {name} again and {why}; checking now would grade {grades}: "
                    f"{way_out}, then run this check again"), []
        if verdict == UNSURE:
            made = f"the one cell In[{cell}] defined" if cell is not None else _made_by(held)
            doubts.append(f"cannot tell whether the {name} checked{' (your function calls it)' * calls} is the one "
                          f"you last ran: it is {made}, and cell In[{later}] binds {name} too; if that cell stopped "
                          f"with an error before it did, this report is about an older {name} (run the cell "
                          f"defining the one you mean, then check again)")
    return None, list(dict.fromkeys(doubts))     # an object's methods, reached by its one name, doubt alike


def _made_by(held) -> str:
    """Where `held`, which no cell's code is, comes from, for a note."""
    if inspect.isfunction(held):
        return "made by code no cell typed (exec'd text, a file)"
    module = getattr(held, "__module__", None)
    owner = "a built-in" if module in (None, "builtins") else f"{module}'s"
    return f"{owner} {getattr(held, '__name__', type(held).__name__)}, which no cell defines"


STALE, UNSURE = "stale", "unsure"
MADE, UNRAN, OTHER = "made", "unran", "other"    # how a cell binds a name (_binding); an alias is ("alias", name)


def _definitions_used(function, exercise):
    """(function, the names leading to it from the notebook's namespace, whether it is a helper)
    for the checked function -- under its own name, the exercise's, or else any name holding it
    -- then for every function and class method its code reaches through the notebook's
    namespace, transitively (each once).  `function` is the Python function check_function runs
    (a partial's, a callable object's __call__)."""
    namespace = _shell().user_ns
    # its own names: ['rmsnorm_backward'], a method's ['Op', 'rmsnorm_backward'] -- a lambda's
    # '<lambda>' or a nested function's 'f.<locals>.g' names nothing the namespace holds
    own = [path for path in (function.__qualname__.split("."), [exercise.backward_name])
           if _still_held(function, path)]
    if not own:         # a lambda or an alias under another name: the names holding it
        own = [[name] for name in list(namespace) if not name.startswith("_") and _still_held(function, [name])]
    for path in {tuple(path): path for path in own}.values():
        yield function, path, False
    seen, todo = {function.__code__}, [function]
    while todo:
        caller = todo.pop()
        if caller.__globals__ is not namespace:      # a module's function: its names are no cell's
            continue
        for name in _global_names(caller.__code__):
            held = namespace[name] if name in namespace else vars(builtins).get(name)
            for helper, path in _functions_under(name, held):
                code = getattr(helper, "__code__", helper)        # a builtin's, a ufunc's: itself
                if code not in seen:
                    seen.add(code)
                    if inspect.isfunction(helper):
                        todo.append(helper)
                    yield helper, path, True


def _global_names(code) -> list[str]:
    """The global names `code` reads (its nested functions, lambdas and comprehensions too)."""
    names = [i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")]
    for const in code.co_consts:
        if inspect.iscode(const):
            names += _global_names(const)
    return list(dict.fromkeys(names))


def _functions_under(name: str, value):
    """What a global name gives the code reading it, with the names a cell binds to replace it;
    (function, path) pairs: a function (seen through a decorator's wrapper, and through a
    functools.partial to the function it holds -- under that function's own name while the
    notebook holds it there, since a cell replaces it by that name); a class's methods; the
    methods of a callable object's class, when a cell defined the class (under the class's name
    while the notebook holds it there, as for a partial); else a callable with no
    Python code of a cell's (a builtin, a numpy ufunc, a library's object) as itself: no cell
    defines it, and a cell failing to define its name leaves it held."""
    if isinstance(value, type):
        yield from _methods(value, [name])
        return
    if not callable(value):
        return
    held_by_a_partial = isinstance(value, functools.partial)
    while isinstance(value, functools.partial):         # partial(partial(f, a), b) too
        value = value.func
    with contextlib.suppress(ValueError):       # a __wrapped__ chain that loops
        value = inspect.unwrap(value)
    value = getattr(value, "__func__", value)        # a staticmethod's, classmethod's or bound method's function
    if inspect.isfunction(value):
        own = value.__qualname__.split(".")
        yield value, (own if held_by_a_partial and _still_held(value, own) else [name])
    elif isinstance(value, type):        # partial(SomeClass): its methods make the object
        yield from _methods(value, value.__qualname__.split("."))
    elif type(value).__module__ == _shell().user_ns.get("__name__"):     # an object of a class a cell defined
        cls, own = type(value), type(value).__qualname__.split(".")
        if _held_at(own) is cls:
            yield from _methods(cls, own)
        else:           # a class defined again since the object was made: the cell making it binds its code
            yield from ((method, [name]) for method, _ in _methods(cls, []))
    else:
        yield value, [name]


def _methods(cls: type, path):
    """A class's methods, the functions its staticmethods and classmethods hold too; (function, path + [its name])."""
    for attribute, member in vars(cls).items():
        member = getattr(member, "__func__", member)
        if inspect.isfunction(member):
            yield member, [*path, attribute]


def _replaced(function, path) -> tuple[str | None, int | None, int | None]:
    """(STALE, UNSURE or None, the cell whose code `function` is or None, the later cell binding
    `path`): STALE when a cell run after the one defining the function, not known to have ended
    without an error, binds its name in a way that would have replaced it -- so it stopped before
    -- UNSURE when whether it did cannot be told from the cells' text."""
    defined_in = _cells_defining(function)
    cell = defined_in[-1] if defined_in else None
    history, ran_to_the_end = _history(), _cells_ran_to_the_end()
    binders = []
    for n in range((-1 if cell is None else cell) + 1, len(history)):
        kind = _last_binding(history[n], path)
        if kind is None:
            continue
        if ran_to_the_end.get(n) and _timed_text(history[n]) is None:
            # a cell that ran without an error did all its code does: a def of the name in it that
            # did not take effect sat in a branch it did not take (an if, a loop, an except); any
            # other binding (an alias, an import, a call's result) made the name hold what it holds
            # now -- the cells before it no longer matter
            if kind != MADE:
                binders.clear()
            continue
        binders.append((n, kind))      # a cell that stopped with an error, or run before watch_cells
    if not binders:
        return None, cell, None
    later, kind = binders[-1]
    if kind in (MADE, UNRAN):       # would hold that cell's function had the line run
        return (STALE if cell is not None else UNSURE), cell, later
    if kind == OTHER:               # an import, a call's result ...: from a file, or maybe this one again
        return (UNSURE if cell is not None else None), cell, later
    alias = kind[1]                 # name = alias: had it run, the name would hold what alias held
    if _still_held(function, [alias]):
        return None, cell, later
    if not any(_last_binding(history[n], [alias]) for n in range(later, len(history))):
        return STALE, cell, later   # alias not rebound since: that line did not run
    return UNSURE, cell, later


# whether each cell run since watch_cells ran to its end without an error, by its number In[n]; per
# shell (a test starts several)
_ENDED_WITHOUT_ERROR: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def watch_cells() -> None:
    """From now on, record whether each cell the session runs ends without an error (IPython keeps
    only its text): a cell that did tells that a def of a name in it which did not take effect sat
    in a branch not taken -- not that it stopped before it.  Called when the check is imported (a
    notebook's first cells) and at each check; nothing outside a session."""
    shell = _shell()
    if shell is None or shell in _ENDED_WITHOUT_ERROR:
        return
    ended = _ENDED_WITHOUT_ERROR[shell] = {}

    def record(result):
        if result is not None:
            ended[result.execution_count] = result.success

    shell.events.register("post_run_cell", record)


def _cells_ran_to_the_end() -> dict[int, bool]:
    """{n: whether In[n] ended without an error} for the cells run since watch_cells."""
    return _ENDED_WITHOUT_ERROR.get(_shell(), {})


def _still_held(function, path) -> bool:
    """Whether the cell's globals still reach `function`'s code by its names: a def run since would
    have replaced it there (a decorator's wrapper is followed to the function it wraps)."""
    held = _held_at(path)
    if callable(held):
        with contextlib.suppress(ValueError):       # a __wrapped__ chain that loops
            held = inspect.unwrap(held)
        held = getattr(held, "__func__", held)      # a bound method's function
    return getattr(held, "__code__", held) is getattr(function, "__code__", function)     # a builtin: itself


def _held_at(path):
    """What the notebook's namespace holds at `path` (['f'], a method's ['Op', 'f']), or None."""
    return functools.reduce(lambda held, name: getattr(held, name, None), path[1:], _shell().user_ns.get(path[0]))


def _last_binding(cell: str, path):
    """How the cell's code last binds the name at `path` (['f'], a method's ['Op', 'f']), None if
    it does not: MADE by a def, a class or a lambda (the cell's own code -- at its top level or
    inside an if, a try, a with, a loop), ("alias", "g") by `f = g`, OTHER by another assignment or
    an import; UNRAN in a cell that does not parse (a syntax error: nothing in it ran), read line
    by line."""
    if path[-1] not in cell:        # most cells of a long notebook: nothing to parse
        return None
    timed = _timed_body(cell)
    cell = cell if timed is None else timed      # a %%time cell binds what its body binds
    statements = _parsed(cell)
    if statements is None:
        return UNRAN if _binds_in_unparsable(cell, path[-1]) else None
    for name in path[:-1]:
        classes = [node for node in _statements(statements) if isinstance(node, ast.ClassDef) and node.name == name]
        statements = [statement for node in classes for statement in node.body]
    kinds = [kind for node in _statements(statements) if (kind := _binding(node, path[-1]))]
    return kinds[-1] if kinds else None


def _binds_in_unparsable(cell: str, name: str) -> bool:
    """Whether a cell that does not parse has a statement `def name(` or `name = ...` (`a = name =
    ...` too), read token by token: the text of a string or a comment, a keyword argument `name=`
    inside brackets, and a lambda's parameter `name=` bind nothing."""
    tokens = _tokens(cell)
    depth, target_next = 0, True     # target_next: the next token starts a statement, or follows its `=`
    for token, following in zip(tokens, tokens[1:]):
        if target_next and depth == 0 and (token.string, following.string) in (("def", name), (name, "=")):
            return True
        depth += token.exact_type in (tokenize.LPAR, tokenize.LSQB, tokenize.LBRACE)
        depth -= token.exact_type in (tokenize.RPAR, tokenize.RSQB, tokenize.RBRACE)
        target_next = (token.type in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT)
                       or token.string in (";", "async", "="))
    return False


def _tokens(cell: str) -> list:
    """The cell's tokens, up to where it cannot be read further (an unclosed string or bracket, an
    unindent matching no line above)."""
    tokens = []
    with contextlib.suppress(tokenize.TokenError, SyntaxError):
        for token in tokenize.generate_tokens(io.StringIO(cell).readline):
            tokens.append(token)
    return tokens


@functools.lru_cache(maxsize=4096)
def _parsed(cell: str) -> list | None:
    """The cell's statements, or None when it does not parse.  Parsed once: each check reads every
    cell run after a definition, for the function and each of its helpers (a notebook of hundreds
    of cells took seconds)."""
    try:
        return ast.parse(cell).body
    except SyntaxError:
        return None


def _statements(statements):
    """The statements run in this scope: those nested in if/try/with/for/while blocks too, not a
    def's or class's body (a scope of its own)."""
    for node in statements:
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                yield from _statements(getattr(node, field, []))


def _binding(node, name: str):
    """How the statement `node` binds `name` (see _last_binding), or None."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return MADE if node.name == name else None
    if isinstance(node, ast.Assign) and any(_stores(target, name) for target in node.targets):
        if isinstance(node.value, ast.Lambda):
            return MADE
        if isinstance(node.value, ast.Name) and all(isinstance(target, ast.Name) for target in node.targets):
            return ("alias", node.value.id)
        return OTHER
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return OTHER if any((alias.asname or alias.name.split(".")[0]) == name for alias in node.names) else None
    return OTHER if any(_stores(target, name) for target in _other_targets(node)) else None


def _other_targets(node) -> list:
    """What an augmented or annotated assignment, a for loop or a with statement binds."""
    if isinstance(node, (ast.AugAssign, ast.For, ast.AsyncFor)):
        return [node.target]
    if isinstance(node, ast.AnnAssign):
        return [node.target] if node.value is not None else []
    if isinstance(node, (ast.With, ast.AsyncWith)):
        return [item.optional_vars for item in node.items if item.optional_vars is not None]
    return []


def _stores(target, name: str) -> bool:
    return any(isinstance(node, ast.Name) and node.id == name for node in ast.walk(target))


watch_cells()      # imported in a notebook: its cells from here on
