"""npllama.use_op: one op replaced in a context, on the backend asked for, and nothing left behind."""
import threading

import numpy as np
import pytest

import npllama
from npllama import Llama, LlamaConfig, backend, use_backend, use_op
from npllama.ops.rmsnorm import rmsnorm_backward

CONFIG = LlamaConfig(vocab_size=13, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
TOKENS = np.array([[1, 5, 7, 2, 9], [3, 3, 8, 1, 4]])
TARGETS = np.array([[5, 7, 2, 9, 1], [3, 8, 1, 4, 6]])


def model():
    return Llama(CONFIG, seed=0, dtype=np.float64)


def doubled(backward):
    """A wrong backward: the right one's dx, doubled.  It reads the cache of the backend whose
    backward it wraps (a backward override must accept its forward's cache)."""
    def doubled_backward(dy, cache):
        dx, dweight = backward(dy, cache)
        return 2 * dx, dweight
    return doubled_backward


doubled_rmsnorm_backward = doubled(rmsnorm_backward)


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_an_override_runs_in_every_call_the_model_makes_then_stops(backend_name):
    m = model()
    calls = []

    def counting(dy, cache):
        calls.append(dy.shape)
        return backend.ops(backend_name).rmsnorm_backward(dy, cache)

    with use_backend(backend_name):
        loss, grads = m.loss_and_grads(TOKENS, TARGETS)
        with use_op("rmsnorm_backward", counting):
            loss2, grads2 = m.loss_and_grads(TOKENS, TARGETS)
        m.loss_and_grads(TOKENS, TARGETS)
    assert len(calls) == 2 * CONFIG.num_hidden_layers + 1      # two per block and the final norm
    assert loss2 == loss
    for name in grads:
        np.testing.assert_allclose(grads2[name], grads[name], rtol=1e-12)


def test_a_wrong_backward_changes_the_gradients_and_only_inside_the_block():
    m = model()
    with use_backend("numpy"):
        _, right = m.loss_and_grads(TOKENS, TARGETS)
        with use_op("rmsnorm_backward", doubled_rmsnorm_backward):
            _, wrong = m.loss_and_grads(TOKENS, TARGETS)
        _, again = m.loss_and_grads(TOKENS, TARGETS)
    assert not np.allclose(wrong["model.embed_tokens.weight"], right["model.embed_tokens.weight"])
    np.testing.assert_allclose(wrong["lm_head.weight"], right["lm_head.weight"])   # above every norm
    np.testing.assert_array_equal(again["model.embed_tokens.weight"], right["model.embed_tokens.weight"])


def test_an_override_for_one_backend_leaves_the_other_alone():
    m = model()
    with use_op("rmsnorm_backward", doubled(backend.ops("numba").rmsnorm_backward), backend="numba"):
        with use_backend("numpy"):
            _, on_numpy = m.loss_and_grads(TOKENS, TARGETS)
        with use_backend("numba"):
            _, on_numba = m.loss_and_grads(TOKENS, TARGETS)
    with use_backend("numpy"):
        _, plain = m.loss_and_grads(TOKENS, TARGETS)
    np.testing.assert_array_equal(on_numpy["model.norm.weight"], plain["model.norm.weight"])
    assert not np.allclose(on_numba["model.embed_tokens.weight"], plain["model.embed_tokens.weight"])


def test_overrides_nest_and_unwind():
    first, second = (lambda *a: None), (lambda *a: None)
    with use_op("rope_forward", first):
        with use_op("rope_forward", second), use_op("rope_backward", first):
            assert backend.overrides() == {"rope_forward": second, "rope_backward": first}
        assert backend.overrides() == {"rope_forward": first}
    assert backend.overrides() == {}


def test_an_override_stays_in_its_thread():
    seen = {}
    started, release = threading.Event(), threading.Event()

    def other_thread():
        started.set()
        release.wait(5)
        seen["other"] = dict(backend.overrides())

    thread = threading.Thread(target=other_thread)
    thread.start()
    started.wait(5)
    with use_op("rmsnorm_forward", lambda *a: None):
        release.set()
        thread.join(5)
        seen["here"] = dict(backend.overrides())
    assert seen["other"] == {} and list(seen["here"]) == ["rmsnorm_forward"]


@pytest.mark.parametrize("name, fn, error, match", [
    ("rmsnorm_backwards", rmsnorm_backward, ValueError, "rmsnorm_backward"),
    ("attention", rmsnorm_backward, ValueError, "name must be an op function"),
    ("rmsnorm_backward", "not callable", TypeError, "fn must be callable"),
])
def test_bad_overrides_are_refused(name, fn, error, match):
    with pytest.raises(error, match=match):
        with use_op(name, fn):
            pass
    assert backend.overrides() == {}


def test_study_selects_the_reference_in_this_context():
    import contextvars

    def inside():
        npllama.study()
        return npllama.get_backend()

    assert contextvars.copy_context().run(inside) == "numpy"


def test_study_as_a_with_block_puts_back_the_backend_before_it():
    import contextvars

    def inside():
        npllama.set_backend("numba")
        with npllama.study():
            during = npllama.get_backend()
        after = npllama.get_backend()
        with pytest.raises(RuntimeError), npllama.study():   # an error in the block puts it back too
            raise RuntimeError
        return during, after, npllama.get_backend()

    assert contextvars.copy_context().run(inside) == ("numpy", "numba", "numba")


def test_an_op_name_that_is_no_str_is_a_type_error_naming_the_argument():
    with pytest.raises(TypeError, match="name must be an op's name, a str .* got int"):
        with use_op(3, lambda *a: a):
            pass


# ----- ops nested inside another op: softmax in attention, silu(gate) * up in the SwiGLU ---------

def nested_overrides():
    """A wrong version of each nested op, and a list its calls are appended to."""
    from npllama.ops import softmax_backward, softmax_forward, swiglu_act_backward, swiglu_act_forward

    calls = []

    def softmax_backward_doubled(dp, p):
        calls.append("softmax_backward")
        return 2 * softmax_backward(dp, p)

    def softmax_forward_sharpened(x, *args, **kwargs):
        calls.append("softmax_forward")
        return softmax_forward(2 * x, *args, **kwargs)

    def swiglu_act_backward_negated(dact, cache):
        calls.append("swiglu_act_backward")
        dgate, dup = swiglu_act_backward(dact, cache)
        return -dgate, dup

    def swiglu_act_forward_doubled(gate, up):
        calls.append("swiglu_act_forward")
        act, cache = swiglu_act_forward(gate, up)
        return 2 * act, cache

    return calls, {"softmax_backward": softmax_backward_doubled, "softmax_forward": softmax_forward_sharpened,
                   "swiglu_act_backward": swiglu_act_backward_negated,
                   "swiglu_act_forward": swiglu_act_forward_doubled}


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
@pytest.mark.parametrize("op_name", ["softmax_backward", "softmax_forward", "swiglu_act_backward",
                                     "swiglu_act_forward"])
@pytest.mark.parametrize("lora", [False, True])
def test_an_override_of_a_nested_op_runs_inside_the_op_that_calls_it(backend_name, op_name, lora):
    from npllama.lora import attach_lora

    m = model()
    if lora:
        adapters = attach_lora(m, r=2, target_modules=("q_proj", "v_proj", "gate_proj", "up_proj"))
        for name in adapters.params:   # B = 0 would leave the adapters out of every gradient but dB
            adapters.params[name] += 0.1
    calls, wrong = nested_overrides()
    with use_backend(backend_name):
        loss, grads = m.loss_and_grads(TOKENS, TARGETS)
        with use_op(op_name, wrong[op_name]):
            loss2, grads2 = m.loss_and_grads(TOKENS, TARGETS)
    assert op_name in calls
    if op_name.endswith("_forward"):
        assert loss2 != loss
    assert any(not np.allclose(grads2[n], grads[n]) for n in grads)


def test_ops_no_llama_runs_are_refused_naming_those_that_can_be_replaced():
    from npllama.ops import layernorm_backward

    with pytest.raises(ValueError, match="no Llama runs.*softmax_backward.*swiglu_act_forward"):
        with use_op("layernorm_backward", layernorm_backward):
            pass
    assert "layernorm_forward" not in backend.replaceable_ops()
    assert "softmax_backward" in backend.replaceable_ops()


def test_an_override_the_lora_adapters_would_bypass_is_an_error_not_ignored():
    from npllama.lora import attach_lora
    from npllama.ops import linear_backward

    m = model()
    attach_lora(m, r=2)
    with use_op("linear_backward", linear_backward), pytest.raises(ValueError, match="LoRA adapters"):
        m.loss_and_grads(TOKENS, TARGETS)


def test_a_backward_override_gets_the_documented_cache_under_the_kernels():
    # written against RMSNormCache (x, rstd, weight) as the op and the exercise document it: under
    # the numba backend the kernel's forward would hand it RowsRMSNormCache (x_rows, rstd (N,), ...)
    import numpy as np

    from npllama import Llama, LlamaConfig, use_backend, use_op
    from npllama.ops.rmsnorm import RMSNormCache, rmsnorm_backward

    seen = []

    def documented_only(dy, cache):
        x, rstd, weight = cache
        seen.append(type(cache))
        assert rstd.shape == x.shape[:-1] + (1,)
        return rmsnorm_backward(dy, RMSNormCache(x, rstd, weight))

    config = LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    model = Llama(config, seed=0, dtype=np.float64)
    tokens = np.random.default_rng(0).integers(0, 11, (2, 5))
    with use_backend("numba"):
        _, expected = model.loss_and_grads(tokens, tokens)
        with use_op("rmsnorm_backward", documented_only):
            _, grads = model.loss_and_grads(tokens, tokens)
    assert seen and set(seen) == {RMSNormCache}
    for name in expected:
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("op", ["attention", "swiglu", "cross_entropy"])
def test_a_fused_kernels_backward_handed_the_references_cache_says_what_to_override(op):
    # docs/debugging.md: under the Numba backend a forward built on the reference needs the
    # reference backward beside it; alone, the kernel's backward cannot read its cache
    import importlib

    reference = importlib.import_module(f"npllama.ops.{op}")
    with use_backend("numba"), use_op(f"{op}_forward", getattr(reference, f"{op}_forward")):
        with pytest.raises(TypeError, match=f"use_op\\('{op}_backward', npllama.ops.{op}.{op}_backward\\)"):
            model().loss_and_grads(TOKENS, TARGETS)


def test_two_threads_making_room_among_the_bound_op_sets_do_not_evict_the_same_one(monkeypatch):
    """backend.bind keeps at most _BOUND_LIMIT re-bound op sets, dropping the oldest.  Two threads
    dropping at once both picked the same oldest key and the second pop raised KeyError (a LoRA model
    called from two threads binds a new set each).  Here thread A is held inside its pop while
    thread B makes room: B must wait for A, not drop A's key under it."""
    import threading

    from npllama import backend
    from npllama.ops import softmax as module

    a_in_pop, b_dropped = threading.Event(), threading.Event()
    holder = {}

    class HeldPop(dict):
        def pop(self, key, *default):
            if threading.current_thread() is holder.get("a"):
                a_in_pop.set()
                b_dropped.wait(0.5)   # with the lock B cannot drop before A is done: A waits out 0.5 s
            return super().pop(key, *default)

    def op_a(*args):   # distinct functions: distinct op sets
        return None

    def op_b(*args):
        return None

    def op_old(*args):
        return None

    bound = HeldPop()
    monkeypatch.setattr(backend, "_bound", bound)
    monkeypatch.setattr(backend, "_BOUND_LIMIT", 1)
    backend.bind(module, {"softmax_forward": op_old})   # the one set there is, which both must drop
    errors = []

    def bind_as(op, after=None):
        try:
            if after is not None:
                after.wait(5)
            backend.bind(module, {"softmax_forward": op})
        except Exception as error:   # noqa: BLE001  (what the thread raised is the test's finding)
            errors.append(error)
        finally:
            if op is op_b:
                b_dropped.set()

    a = threading.Thread(target=bind_as, args=(op_a,))
    b = threading.Thread(target=bind_as, args=(op_b, a_in_pop))
    holder["a"] = a
    a.start()
    b.start()
    a.join(10)
    b.join(10)
    assert not errors, errors
    assert len(bound) == 1


def backward_taking_only_dy(dy):
    return dy


def softmax_forward_without_check_values(x):
    return x, x


def attention_forward_without_q_offset(q, k, v, causal=True, key_padding_mask=None):
    return q, None


@pytest.mark.parametrize("name, fn, missing", [
    ("rmsnorm_backward", backward_taking_only_dy, "cache"),
    ("softmax_forward", softmax_forward_without_check_values, "check_values"),   # passed by keyword
    ("attention_forward", attention_forward_without_q_offset, "q_offset"),       # passed by position
])
def test_a_function_that_cannot_take_the_ops_arguments_is_refused_before_the_model_runs(name, fn, missing):
    # the model would otherwise fail deep inside a block with "takes 1 positional argument but 2
    # were given", naming neither the op nor what it passes
    with pytest.raises(TypeError, match=rf"fn for {name} must accept .*{missing}.*"
                                        rf"{fn.__name__}\(.*\)"):
        with use_op(name, fn):
            pass
    assert backend.overrides() == {}


@pytest.mark.parametrize("fn", [
    lambda *args, **kwargs: None,
    lambda dy, cache, extra=None: None,
    lambda d, c: None,                     # the backward's arguments are passed by position
])
def test_a_function_that_can_take_the_ops_arguments_is_accepted(fn):
    with use_op("rmsnorm_backward", fn):
        assert backend.overrides()["rmsnorm_backward"] is fn


@pytest.mark.parametrize("op", ["attention", "swiglu", "cross_entropy"])
def test_a_backward_written_for_the_documented_cache_says_why_it_fails_under_the_kernels(op):
    # the Numba backend (the default) hands a backward override the fused kernel's own cache; a
    # student's backward that unpacks the documented one failed with "too many values to unpack"
    # inside their own code, with nothing saying that the cache was not the one they were given
    import importlib

    reference = importlib.import_module(f"npllama.ops.{op}")

    def my_backward(dout, cache):
        return getattr(reference, f"{op}_backward")(dout, cache)

    with use_backend("numba"), use_op(f"{op}_backward", my_backward):
        with pytest.raises(Exception) as raised:
            model().loss_and_grads(TOKENS, TARGETS)
    notes = "\n".join(getattr(raised.value, "__notes__", []))
    assert f"{op}_backward -> {my_backward.__qualname__}" in notes
    assert "npllama.study()" in notes
    assert f"use_op('{op}_forward', npllama.ops.{op}.{op}_forward)" in notes


def test_an_error_after_an_override_returned_the_wrong_dtype_names_the_override():
    # float32 gradients from a float64 model's override: a kernel downstream refuses them, and
    # the error should lead back to the override rather than only to the kernel
    def float32_backward(dy, cache):
        return tuple(g.astype(np.float32) for g in rmsnorm_backward(dy, cache))

    with use_backend("numba"), use_op("rmsnorm_backward", float32_backward):
        with pytest.raises(TypeError, match="float32") as raised:
            model().loss_and_grads(TOKENS, TARGETS)
    notes = getattr(raised.value, "__notes__", [])
    assert len(notes) == 1 and "rmsnorm_backward -> " + float32_backward.__qualname__ in notes[0]
    assert "npllama.study()" not in notes[0]   # (the cache note is for fused kernels' backwards only)


def test_an_error_with_no_override_in_force_gets_no_note():
    with pytest.raises(ValueError) as raised:
        model().loss_and_grads(TOKENS, TARGETS[:, :3])
    assert not getattr(raised.value, "__notes__", [])


class _ErrorWithoutAddNote(ValueError):
    """As every exception is on Python 3.10 (pyproject: requires-python >= 3.10): no add_note."""

    def __getattribute__(self, name):
        if name == "add_note":
            raise AttributeError(f"'ValueError' object has no attribute 'add_note'")
        return super().__getattribute__(name)


def test_an_error_under_an_override_keeps_its_type_where_exceptions_have_no_add_note():
    # Python 3.10: error.add_note raised AttributeError inside the except clause, so the student saw
    # an AttributeError about add_note instead of the error their override caused
    def raising_backward(dy, cache):
        raise _ErrorWithoutAddNote("my bug")

    with use_backend("numpy"), use_op("rmsnorm_backward", raising_backward):
        with pytest.raises(_ErrorWithoutAddNote, match="my bug") as raised:
            model().loss_and_grads(TOKENS, TARGETS)
    assert raised.value.__context__ is None


def test_a_function_needing_an_argument_npllama_may_leave_out_is_refused():
    # the classifier and SOP heads call cross_entropy_forward(logits, labels): without its default,
    # an ignore_index the causal model passes fails only once a classifier is fine-tuned
    def my_cross_entropy(logits, targets, ignore_index):
        return backend.ops("numpy").cross_entropy_forward(logits, targets, ignore_index)

    with pytest.raises(TypeError, match=r"fn for cross_entropy_forward must accept .*left out.*"
                                        r"missing a required argument: 'ignore_index'"):
        with use_op("cross_entropy_forward", my_cross_entropy):
            pass



def test_an_error_in_a_classifier_head_under_an_override_names_it():
    # the heads (npllama/finetune.py, objectives.py) run their ops outside Llama's public methods
    from npllama.finetune import SequenceClassifier
    from npllama.ops.cross_entropy import cross_entropy_backward

    def my_backward(dloss, cache):
        return cross_entropy_backward(dloss, cache)

    classifier = SequenceClassifier(model(), ["a", "b"])
    with use_backend("numba"), use_op("cross_entropy_backward", my_backward):
        with pytest.raises(TypeError) as raised:
            classifier.loss_and_grads(TOKENS, np.ones_like(TOKENS), [0, 1])
    notes = "\n".join(getattr(raised.value, "__notes__", []))
    assert "cross_entropy_backward -> " + my_backward.__qualname__ in notes
    assert "npllama.study()" in notes


def test_an_error_in_the_sop_head_under_an_override_names_it():
    from npllama.objectives import SentenceOrderBatch, init_sop_head, mlm_sop_loss_and_grads

    def my_backward(dlogits, cache):
        raise ValueError("my bug")

    m = model()
    head = init_sop_head(CONFIG.hidden_size, dtype=np.float64)
    batch = SentenceOrderBatch(inputs=TOKENS, targets=np.full_like(TOKENS, -100),
                               attention_mask=np.ones(TOKENS.shape, dtype=bool), sop_labels=np.array([0, 1]))
    with use_op("classifier_backward", my_backward), pytest.raises(ValueError, match="my bug") as raised:
        mlm_sop_loss_and_grads(m, head, batch)
    notes = getattr(raised.value, "__notes__", [])
    assert len(notes) == 1 and "classifier_backward -> " + my_backward.__qualname__ in notes[0]


def test_an_error_the_backward_override_had_no_part_in_gets_no_word_of_the_kernels_cache():
    # the targets are refused before any backward runs: the cache was never handed to the override
    kernel_backward = backend.ops("numba").attention_backward

    def my_backward(dout, cache):   # written for the kernel's cache: right under the kernels
        return kernel_backward(dout, cache)

    with use_backend("numba"), use_op("attention_backward", my_backward):
        with pytest.raises(ValueError) as raised:
            model().loss_and_grads(TOKENS, TARGETS[:, :3])
    notes = "\n".join(getattr(raised.value, "__notes__", []))
    assert "attention_backward -> " + my_backward.__qualname__ in notes
    assert "npllama.study()" not in notes and "handed the cache" not in notes


def test_the_note_is_added_once_though_the_error_passes_several_methods_that_add_it():
    # a block's backward raises inside Llama.hidden_backward (a public method), inside the
    # classifier's loss_and_grads: both add the note
    from npllama.finetune import SequenceClassifier

    def raising_backward(dy, cache):
        raise ValueError("my bug")

    classifier = SequenceClassifier(model(), ["a", "b"])
    with use_op("rmsnorm_backward", raising_backward), pytest.raises(ValueError, match="my bug") as raised:
        classifier.loss_and_grads(TOKENS, np.ones_like(TOKENS), [0, 1])
    notes = getattr(raised.value, "__notes__", [])
    assert len(notes) == 1 and "rmsnorm_backward -> " + raising_backward.__qualname__ in notes[0]
