"""What gradcheck and check_op are given, checked before any probe: the settings, the inputs and
their names (a list, or a mapping by key), wrt, float64 throughout, forward's (out, cache) and
backward's gradients, each mistake a TypeError or ValueError that names the argument and says
what was expected -- and the call of forward and backward as check_op makes it, whose TypeError
says how check_op calls them (_call_as_check_op_does)."""
from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping

import numpy as np

from .constants import UNIT_ROUNDOFF


METHODS = ("auto", "entries", "directional")
# how the gradients are ordered, as the messages of a gradient in another's place say it
GRADS_ORDER = "grads are in the order of inputs"
BACKWARD_ORDER = "backward returns the gradients in the forward's order"
DEFAULT_PREFIX = "input"    # the i-th input's name in the report is input<i> when names= is not given


def _gradients_in_order(grads, wrt, wrt_given, inputs, all_names) -> tuple:
    """backward's result for a list of inputs: one gradient per input in wrt, in order."""
    returned = grads
    if isinstance(grads, list):
        grads = tuple(grads)
    elif not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) != len(wrt):
        hint = ""
        if not isinstance(returned, (tuple, list, np.ndarray)):
            hint = f"; it returned {_describe(returned)}: return a tuple, one array each"
        elif not wrt_given and len(grads) < len(wrt):
            hint = (f"; wrt was not given, so every floating-point input counts: if some are not "
                    f"differentiable (a float mask, a setting), name those that are, e.g. wrt={wrt[:len(grads)]}")
        elif not wrt_given and (not_arrays := _not_arrays_among(inputs, all_names)):
            hint = "; left out as not floating-point arrays: " + not_arrays[2:]
        elif len(grads) > len(wrt) and (left_out := [f"{all_names[i]!r} ({_kind(x)})" for i, x in enumerate(inputs)
                                                     if i not in wrt and isinstance(x, np.ndarray)]):
            hint = (f"; {', '.join(left_out)} {'is' if len(left_out) == 1 else 'are'} not differentiated "
                    + ("(not in wrt)" if wrt_given else "(not a floating-point array: an index or a mask)")
                    + ", so backward returns no gradient for it, not even None")
        raise ValueError(f"backward returned {len(grads)} gradient(s), expected {len(wrt)}: one per input "
                         f"in wrt ({', '.join(repr(all_names[i]) for i in wrt)}), in the forward's order{hint}")
    return grads


def _gradients_by_key(grads, wrt, all_names) -> tuple:
    """backward's result for a mapping of inputs: a mapping with a gradient for every key in wrt,
    as a tuple in wrt's order.  Gradients for other keys of inputs (left out by wrt=) are not
    checked; a key that is not one of inputs' is a mistake (a misspelt name)."""
    expected = [all_names[i] for i in wrt]
    if not isinstance(grads, Mapping):
        raise TypeError(f"backward must return a mapping of gradients keyed like inputs (inputs is a mapping), "
                        f"got {_describe(grads)}; expected the keys {expected}")
    missing = [k for k in expected if k not in grads]
    if missing:
        raise ValueError(f"backward returned no gradient for {missing[0]!r} (it returned the keys {list(grads)}, "
                         f"expected {expected}); return its gradient, or leave it out with wrt=")
    strangers = [k for k in grads if k not in all_names]
    if strangers:
        raise ValueError(f"backward returned a gradient for {strangers[0]!r}, which is not a key of inputs "
                         f"(its keys: {all_names})")
    return tuple(grads[k] for k in expected)


def _call_as_check_op_does(function, role: str, args: tuple, kwargs: Mapping, shown: str, advice: str = ""):
    """function(*args, **kwargs); when its parameters cannot take that call, a TypeError saying how
    check_op calls it: the TypeError the call itself raises names neither the call nor the way to
    fix it.  The call decides, not the signature: inspect.signature can report other parameters
    than the call takes (a decorator's functools.wraps reports the wrapped function's), so it only
    explains a TypeError raised by the call itself -- one with no frame of the function's own (a
    TypeError from inside the function is the function's, and is left as it is)."""
    try:
        return function(*args, **kwargs)
    except TypeError as error:
        if error.__traceback__ is None or error.__traceback__.tb_next is not None:
            raise
        try:
            signature = inspect.signature(function)
            signature.bind(*args, **kwargs)
        except ValueError:         # a builtin or compiled function keeps no signature: its error stands
            raise error from None
        except TypeError as unbound:
            name = getattr(function, "__name__", type(function).__name__)
            raise TypeError(f"check_op calls {shown}, and {role} {name}{signature} cannot take that call "
                            f"({unbound}){advice}") from None
        raise


def _call_shown(role: str, arguments: list[str], extra_args, extra_kwargs: Mapping) -> str:
    """forward(x, W, 'extra', causal=True): the call as check_op makes it, by the inputs' names."""
    shown = [*arguments, *(repr(a) if np.isscalar(a) else _kind(a) for a in extra_args),
             *(f"{key}=..." for key in extra_kwargs)]
    return f"{role}({', '.join(shown)})"


def _one_by_one_advice(forward, names: list[str]) -> str:
    """For a forward given a mapping whose parameters are the mapping's keys, one by one."""
    try:
        parameters = list(inspect.signature(forward).parameters)
    except (TypeError, ValueError):
        return ""
    if set(names) <= set(parameters):
        return (f": a mapping of inputs goes to forward as one argument (a forward(params) of a dict of "
                f"parameters); to pass the arrays one by one, give inputs as a list, inputs=[{', '.join(names)}], "
                f"names={names!r}")
    return ""


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}" if np.isscalar(value) or value is None else type(value).__name__


def _kind(value) -> str:
    """'int64' for an array, else the type's name ('list', 'float'): how an input left out was given."""
    return value.dtype.name if isinstance(value, np.ndarray) else type(value).__name__


def _input_list(inputs, what: str) -> list:
    if isinstance(inputs, np.ndarray) or not isinstance(inputs, (list, tuple)):
        hint = f" (one array: {what}=[x])" if isinstance(inputs, np.ndarray) else ""
        raise TypeError(f"{what} must be a list or tuple of arrays, got {_describe(inputs)}{hint}")
    return list(inputs)


def _check_names(names, count: int, what: str) -> list[str]:
    if names is None:
        return [f"{DEFAULT_PREFIX}{i}" for i in range(count)]
    if isinstance(names, (str, Mapping)) or not isinstance(names, (list, tuple)):
        raise TypeError(f"names must be a list of strings, one per input, got {_describe(names)}")
    not_strings = [n for n in names if not isinstance(n, str)]
    if not_strings:
        raise TypeError(f"names must be a list of strings, one per input, got {_describe(names)} holding "
                        f"{_describe(not_strings[0])}")
    if len(names) != count:
        raise ValueError(f"names has {len(names)} entries for {count} {what}: give one name per input")
    if len(set(names)) != len(names):
        raise ValueError(f"names must be distinct, got {list(names)}")
    return list(names)


def _names_from_keys(inputs: Mapping, names) -> list[str]:
    """The names of inputs given as a mapping: its keys, which must be strings (they name the
    inputs in the report and in its messages, as names= does for a list)."""
    if names is not None:
        raise TypeError("names= is taken from the keys when inputs is a mapping; leave it out")
    not_strings = [k for k in inputs if not isinstance(k, str)]
    if not_strings:
        raise TypeError(f"the keys of inputs name the inputs in the report and must be strings, got "
                        f"{_describe(not_strings[0])}")
    return list(inputs)


def _wrt_keys(wrt, names: list[str]):
    """wrt given as keys of a mapping of inputs: their indices, in the mapping's order (None stays
    None: every floating-point array)."""
    if wrt is None:
        return None
    not_keys = [k for k in wrt if not isinstance(k, str)] if isinstance(wrt, (list, tuple)) else [wrt]
    if not_keys:
        holding = f" holding {_describe(not_keys[0])}" if isinstance(wrt, (list, tuple)) else ""
        raise TypeError(f"wrt must be a list of keys of inputs (inputs is a mapping), got {_describe(wrt)}{holding}")
    unknown = [k for k in wrt if k not in names]
    if unknown:
        raise ValueError(f"wrt names {unknown[0]!r}, which is not a key of inputs (its keys: {names})")
    if len(set(wrt)) != len(wrt):
        raise ValueError(f"wrt must list each key once, got {list(wrt)}")
    return [i for i, name in enumerate(names) if name in wrt]


def _check_wrt(wrt, inputs: list, names: list[str]) -> list[int]:
    count = len(inputs)
    if wrt is None:   # every floating-point array: integer indices, masks and settings are not differentiable
        for name, x in zip(names, inputs):
            if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.complexfloating):
                raise TypeError(f"input {name!r} is {x.dtype}: only real inputs are differentiated; pass its "
                                "real and imaginary parts as two float64 inputs, or give wrt= to leave it out")
        wrt = [i for i, x in enumerate(inputs) if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating)]
        if not wrt:
            raise ValueError("inputs holds no floating-point array to check the gradient of"
                             + _not_arrays_among(inputs, names))
        return wrt
    if not isinstance(wrt, (list, tuple, range)):
        raise TypeError(f"wrt must be a list of input indices (ints), got {_describe(wrt)}")
    not_ints = [i for i in wrt if not isinstance(i, (int, np.integer)) or isinstance(i, bool)]
    if not_ints:
        by_index = ""
        if all(isinstance(i, str) and i in names for i in wrt):     # the names given with names=, as a mapping's keys would be
            by_index = f"; wrt lists inputs by index when inputs is a list: wrt={[names.index(i) for i in wrt]}"
        raise TypeError(f"wrt must be a list of input indices (ints), got {_describe(wrt)} holding "
                        f"{_describe(not_ints[0])}{by_index}")
    wrt = [int(i) for i in wrt]
    bad = [i for i in wrt if not 0 <= i < count]
    if bad:
        raise ValueError(f"wrt names input indices {bad}, but there are {count} inputs (0 to {count - 1})")
    if len(set(wrt)) != len(wrt) or wrt != sorted(wrt):
        raise ValueError(f"wrt must list each input once, in increasing order (backward's order), got {wrt}")
    for i in wrt:
        x = inputs[i]
        if isinstance(x, np.ndarray) and not np.issubdtype(x.dtype, np.inexact):
            rest = [j for j in wrt if j != i]
            instead = f" (wrt={rest})" if rest else ""
            article = "an" if str(x.dtype)[0] in "aio" else "a"      # an int64, an object, a bool, a uint8
            raise TypeError(f"wrt lists {names[i]!r}, {article} {x.dtype} array: an index array or a mask has no gradient; "
                            f"leave it out of wrt{instead}, and backward returns no gradient for it")
    return wrt


def _not_arrays_among(inputs: list, names: list[str]) -> str:
    """'; 'w' is a list: pass np.asarray(w, dtype=np.float64) to check it' for inputs given as
    Python lists or tuples, or as float numbers (a scale s=1.5 meant as a parameter), which wrt's
    default leaves out as it does settings (they are not arrays); '' if none.  An int number is
    taken for a setting (a count, an axis) and not named."""
    not_arrays = [(name, x) for name, x in zip(names, inputs)
                  if isinstance(x, (list, tuple, float, np.floating))]
    if not not_arrays:
        return ""
    described = ", ".join(f"{name!r} is a {type(x).__name__}" for name, x in not_arrays)
    first, value = not_arrays[0]
    make = "np.asarray" if isinstance(value, (list, tuple)) else "np.array"
    return f"; {described}: pass {make}({first}, dtype=np.float64) to check it"


def _forward_result(result):
    """(out, cache) from what forward returned, or a TypeError saying what the contract is."""
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise TypeError(f"forward must return a pair (out, cache), got {_describe(result)}"
                        + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else ""))
    out, cache = result
    if isinstance(out, (tuple, list)) or not np.issubdtype(np.asarray(out).dtype, np.floating):
        raise TypeError(f"forward's out must be one floating-point array, got {_describe(out)}; for several "
                        "outputs, concatenate their ravelled values into one array (and split dout in backward)")
    _require_float64_precision(out, "forward's out is")
    not_finite = ~np.isfinite(out)
    if np.any(not_finite):
        values = np.asarray(out)[not_finite]
        kind = "NaN" if np.all(np.isnan(values)) else "inf" if not np.any(np.isnan(values)) else "NaN or inf"
        where = "" if np.ndim(out) == 0 else (f" at {values.size} {'entry' if values.size == 1 else 'entries'}, the first "
                                              f"{tuple(int(i) for i in np.argwhere(not_finite)[0])},")
        raise ValueError(f"forward's out is {kind}{where} at the inputs given, before any step: L = sum(out * dout) "
                         "has no value there, so nothing can be checked; check at inputs where out is finite (a "
                         "softmax over a row masked entirely is NaN), or, where out holds inf by design, check a "
                         "forward that sets those entries to 0")
    return out, cache


def _fn_value(value) -> float:
    """gradcheck's fn's value as a float, or a TypeError saying what fn returned and what to return
    instead: a (loss, more) pair, as loss_and_grads returns, or a dict of outputs, is a common slip,
    and an integer (int(), a count) has dropped what a step moves, so it would pass a zero gradient."""
    if isinstance(value, (tuple, list)):
        returned = f"a {type(value).__name__} of {len(value)}"
        advice = "return the scalar alone (for a function returning (loss, more): fn=lambda *a: f(*a)[0])"
    elif isinstance(value, Mapping):
        returned = f"a {type(value).__name__} with the keys {list(value)}"
        advice = f"return the scalar alone (fn=lambda *a: f(*a)[{next(iter(value), 'key')!r}])"
    elif value is not None and not isinstance(value, (numbers.Number, np.ndarray, np.generic)):
        # a torch tensor (NumPy's conversion raises for one that requires grad), a str
        returned = f"a {type(value).__module__}.{type(value).__name__}" if hasattr(value, "item") else _describe(value)
        advice = "return a float (float(loss); for a tensor, loss.item() of a float64 one)"
    elif np.issubdtype(np.asarray(value).dtype, np.integer):
        returned = f"an integer ({_describe(value)})"
        advice = ("an integer made from float inputs has dropped what a step moves (int(), a count, an argmax): "
                  "return the float it was made from")
    elif value is None or np.asarray(value).dtype == bool or np.size(value) != 1 or not np.isrealobj(value):
        returned, advice = _describe(value), "sum or reduce its output first"
    else:
        _require_float64_precision(value, "fn returned")
        return float(np.asarray(value, dtype=np.float64).reshape(()))
    raise TypeError(f"fn must return one real number (the scalar whose gradient is checked); fn returned "
                    f"{returned}: {advice}")


def _require_float64_input(name: str, x) -> None:
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
        if isinstance(x, (list, tuple)):
            advice = f": pass np.asarray({name}, dtype=np.float64)"
        elif isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_)):
            advice = f": the checker moves its entries in place: pass a 0-d array, np.array({float(x)!r})"
        else:
            advice = ""
        raise TypeError(f"input {name!r} must be a floating-point numpy array, got {_describe(x)}{advice}")
    if x.dtype != np.float64:
        rounding = (f"{x.dtype}'s round-off ({np.finfo(x.dtype).eps:.0e}) swamps central differences"
                    if np.finfo(x.dtype).eps > UNIT_ROUNDOFF else "the bounds model float64's round-off")
        raise TypeError(f"input {name!r} is {x.dtype}; gradient checks need float64 ({rounding}): "
                        f"{_in_code(name)}.astype(np.float64), or for a model Llama(config, dtype=np.float64)")


def _in_code(name: str) -> str:
    """The input as advice writes it in code: by its name where the user gave one that Python can
    spell (weight, model.embed_tokens.weight), else x (a name made up for it, input0, is no
    variable of the user's)."""
    made_up = name.startswith(DEFAULT_PREFIX) and name[len(DEFAULT_PREFIX):].isdigit()
    return name if not made_up and all(part.isidentifier() for part in name.split(".")) else "x"


def _require_float64_precision(value, what: str) -> None:
    """The bounds model float64 round-off: a value rounded to float32 or float16 on the way out
    (f's, which then looks like a kink, or a gradient's, off by more than the relative floor tol)
    would fail a right gradient, so it is refused before any probe."""
    dtype = np.asarray(value).dtype
    if np.issubdtype(dtype, np.floating) and np.finfo(dtype).eps > UNIT_ROUNDOFF:
        raise TypeError(f"{what} {dtype.name}, though the inputs are float64: its round-off "
                        f"({np.finfo(dtype).eps:.0e}) is far above the float64 round-off the bounds allow for, "
                        "and would fail a right gradient; compute in float64 (an op's dtype should follow its input's)")


def _pair_up(inputs, grads, names, order: str | None = GRADS_ORDER):
    """(names, arrays, gradients) after checking that they match.  order: how the gradients are
    ordered, said when one has the shape of another input (None: keyed, no order to get wrong)."""
    if isinstance(inputs, Mapping):
        if not isinstance(grads, Mapping):
            raise TypeError(f"grads must be a mapping with the keys of inputs when inputs is a mapping, got "
                            f"{_describe(grads)}")
        names, order = _names_from_keys(inputs, names), None    # keyed: no order to get wrong
        missing = [k for k in inputs if k not in grads]
        if missing:
            raise ValueError(f"grads is missing entries for: {missing} (its keys: {list(grads)})")
        extra = [k for k in grads if k not in inputs]
        if extra:
            raise ValueError(f"grads has entries that are not inputs: {extra}")
        arrays = [inputs[k] for k in names]
        analytic = [grads[k] for k in names]
    else:
        arrays = _input_list(inputs, "inputs")
        analytic = _input_list(grads, "grads") if not isinstance(grads, Mapping) else None
        if analytic is None:
            raise TypeError("grads must be a list when inputs is a list (or both mappings)")
        names = _check_names(names, len(arrays), "inputs")
        if len(analytic) != len(arrays):
            raise ValueError(f"got {len(arrays)} inputs and {len(analytic)} gradients: give one gradient per input")
    for name, x, g in zip(names, arrays, analytic):
        _require_float64_input(name, x)
        if not x.flags.writeable:
            raise ValueError(f"input {name!r} is read-only, but the checker moves its entries in place: pass a "
                             "writable array (np.array(x)) that fn reads")
        if g is None:
            raise ValueError(f"the gradient for {name!r} is None; give its gradient, or leave the input out")
        if not isinstance(g, (np.ndarray, float, int, np.number)) or not np.isrealobj(g) \
                or not np.issubdtype(np.asarray(g).dtype, np.number):
            raise TypeError(f"the gradient for {name!r} must be a real array, got {_describe(g)}")
        _require_float64_precision(g, f"the gradient for {name!r} is")
        if np.shape(g) != x.shape:
            raise ValueError(f"gradient for {name!r} has shape {np.shape(g)}, input has {x.shape}"
                             + _out_of_order(np.shape(g), name, names, arrays, order, x.shape))
    for i, (name_i, x_i) in enumerate(zip(names, arrays)):
        for name_j, x_j in zip(names[i + 1:], arrays[i + 1:]):
            if np.shares_memory(x_i, x_j):
                raise ValueError(f"inputs {name_i!r} and {name_j!r} share memory (the same array given twice?): "
                                 "moving one would move the other; check each once, or pass a copy")
    return names, arrays, analytic


def _out_of_order(shape: tuple, name: str, names: list[str], arrays: list, order: str | None,
                  own: tuple = ()) -> str:
    """'; (5,) is the shape of 'b': ...' when a gradient's shape is another input's (gradients given
    in another order than the inputs'), else ''.  own: the input's own shape; a gradient whose shape
    is that transposed is named as possibly transposed too (dW as W.T with W.T of x's shape)."""
    others = [other for other, x in zip(names, arrays) if other != name and np.shape(x) == shape]
    if order is None or not others:
        return ""
    if len(own) >= 2 and shape == tuple(reversed(own)):
        return (f"; {shape} is the shape of {name!r} transposed, and of {others[0]!r}: a transposed gradient, "
                f"or {order} ({', '.join(repr(n) for n in names)})")
    return f"; {shape} is the shape of {others[0]!r}: {order} ({', '.join(repr(n) for n in names)})"


def _check_settings(eps, tol, atol, max_entries, seed=0, method="auto", directions=4, richardson=None,
                    **functions) -> None:
    for name, fn in functions.items():
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    for name, value, positive in (("eps", eps, True), ("tol", tol, False), ("atol", atol, False)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not np.isfinite(value) or value < 0 or (positive and value == 0):
            raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    if eps >= 0.1:
        raise ValueError(f"eps is a step relative to each input's scale and must be < 0.1, got {eps!r}")
    if max_entries is not None and (isinstance(max_entries, bool) or not isinstance(max_entries, (int, np.integer))
                                    or max_entries <= 0):
        raise ValueError(f"max_entries must be None or a positive int, got {max_entries!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int (it makes the sampled probes reproducible), got {seed!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(directions, bool) or not isinstance(directions, (int, np.integer)) or directions <= 0:
        raise ValueError(f"directions must be a positive int, got {directions!r}")
    if richardson not in (None, True, False):
        raise ValueError(f"richardson must be None, True or False, got {richardson!r}")
