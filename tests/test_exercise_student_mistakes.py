"""What a student meets doing the exercises, each case an answer with a typical slip: the report
must say which gradient is wrong and how, never pass it, and never blame the student's code for
the checker's own trouble."""
import re
import textwrap

import numpy as np
import pytest

from npllama.exercises import check_file, check_function
from npllama.exercises.sandbox import grade_file

RMSNORM_RIGHT = """import numpy as np
def rmsnorm_backward(dy, cache):
    x, rstd, weight = cache
    xhat = x * rstd
    dxhat = dy * weight
    dx = rstd * (dxhat - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))
    dweight = (dy * xhat).reshape(-1, x.shape[-1]).sum(0)
    return {returned}
"""


def _rmsnorm_file(tmp_path, returned):
    path = tmp_path / "rmsnorm_backward.py"
    path.write_text(RMSNORM_RIGHT.format(returned=returned))
    return path


def test_a_list_among_the_gradients_is_named_not_reported_as_a_crash(tmp_path):
    graded = grade_file("rmsnorm", _rmsnorm_file(tmp_path, "dx.tolist(), dweight"), n_random=0)
    assert (graded.status, graded.first_failure) == ("fail", "returns"), graded.text
    assert graded.diagnosis == "dx: your function returned dx as a Python list, not a NumPy array"
    assert "raised" not in graded.text


SWIGLU_ACT_IN_FLOAT32 = """import numpy as np
def swiglu_act_backward(dact, cache):
    gate, up, gate_sigmoid, silu_gate = cache
    dgate = dact * up * gate_sigmoid * (1 + gate * (1 - gate_sigmoid))
    return dgate.astype(np.float32), (dact * silu_gate).astype(np.float32)
"""


def test_float32_gradients_of_float64_inputs_fail_returns_by_their_dtype(tmp_path):
    # right to ~1e-8: inside the gradient check's tolerance, so only the dtype shows it (swiglu_act
    # passed every check; rmsnorm failed its invariant with "the projection term is missing")
    path = tmp_path / "swiglu_act_backward.py"
    path.write_text(SWIGLU_ACT_IN_FLOAT32)
    graded = grade_file("swiglu_act", path, n_random=0)
    assert (graded.status, graded.first_failure) == ("fail", "returns"), graded.text
    assert graded.diagnosis == "dgate: dgate is float32 although gate is float64: a gradient has its input's dtype"

    graded = grade_file("rmsnorm", _rmsnorm_file(tmp_path, "dx.astype(np.float32), dweight"), n_random=0)
    assert (graded.status, graded.first_failure) == ("fail", "returns"), graded.text
    assert "dx is float32 although x is float64" in graded.diagnosis
    assert "dtype=dy.dtype" in graded.text          # the student's own name for the upstream gradient



def test_float32_gradients_are_still_judged_by_the_gradient_check_not_reported_as_a_crash(tmp_path):
    # gradcheck refuses a float32 gradient (TypeError, before any probe): the grader's gradient
    # check gave ERROR "your function raised TypeError" -- the checker's refusal blamed on the
    # student's code -- where it had judged the values (returns already names the dtype)
    path = tmp_path / "swiglu_act_backward.py"
    path.write_text(SWIGLU_ACT_IN_FLOAT32)
    report = check_file("swiglu_act", path, n_random=1)
    statuses = {r.check.name: r.status for r in report.results}
    assert statuses["returns"] == "fail" and statuses["gradient"] == "pass", report.format()
    assert "raised" not in report.format()

    wrong = SWIGLU_ACT_IN_FLOAT32.replace("(1 + gate * (1 - gate_sigmoid))", "(1 + gate * gate_sigmoid)")
    path.write_text(wrong)
    gradient = next(r for r in check_file("swiglu_act", path, n_random=1).results if r.check.name == "gradient")
    assert gradient.status == "fail" and gradient.finding.grad == "dgate", gradient.finding


def test_gradients_returned_as_a_named_tuple_pass_the_gradient_check(tmp_path):
    # the float64 wrapper round the student's backward rebuilt a named tuple from one iterable:
    # a right answer got ERROR "your function raised TypeError: G.__new__() missing ..."
    path = _rmsnorm_file(tmp_path, "collections.namedtuple('G', 'dx dweight')(dx, dweight)")
    path.write_text("import collections\n" + path.read_text())
    report = check_file("rmsnorm", path, n_random=1)
    assert report.ok, report.format()


def test_a_model_parameter_in_another_dtype_is_named_by_its_own_name():
    # a model parameter's gradient is named as the student's dict holds it, grads['<dotted name>']
    # (it read d:model.norm.weight, a trace's name); its input is the dotted name
    from npllama.model import model_backward

    def norm_weight_in_float32(dlogits, cache, config):
        grads = model_backward(dlogits, cache, config)
        grads["model.norm.weight"] = grads["model.norm.weight"].astype(np.float32)
        return grads
    finding = check_function("model", norm_weight_in_float32, n_random=0).first_failure.finding
    assert finding.grad == "grads['model.norm.weight']"
    assert finding.message == ("grads['model.norm.weight'] is float32 although model.norm.weight is float64: "
                               "a gradient has its input's dtype")
    assert "gradient: grads['model.norm.weight']" in check_function("model", norm_weight_in_float32,
                                                                       n_random=0).format()

def _nan_dx(backward):
    """A student's backward whose dx came out NaN (a 0/0 upstream), the other gradients right."""
    def with_nan(dy, cache):
        dx, *rest = backward(dy, cache)
        return (np.full_like(dx, np.nan), *rest)
    return with_nan


def test_nan_never_passes_an_invariant_check():
    from npllama.ops.layernorm import layernorm_backward
    from npllama.ops.rmsnorm import rmsnorm_backward

    for op, invariant, backward in (("rmsnorm", "orthogonal", rmsnorm_backward),
                                    ("layernorm", "rows sum to 0", layernorm_backward)):
        report = check_function(op, _nan_dx(backward), n_random=0)
        result = next(r for r in report.results if r.check.name == invariant)
        assert result.status == "fail", report.format()
        assert result.finding.message.endswith("entries of dx are NaN or Inf")


def test_gradients_in_a_rotated_order_are_named_as_the_order_not_a_transpose():
    from npllama.ops.swiglu import swiglu_backward

    def dw_down_first(dout, cache):      # dx, then the weights in the order F-side first
        dx, dw_gate, dw_up, dw_down = swiglu_backward(dout, cache)
        return dx, dw_down, dw_gate, dw_up
    finding = check_function("swiglu", dw_down_first, n_random=0).first_failure.finding
    assert finding.message == ("the gradients come back in the wrong order: yours are (dx, dw_down, dw_gate, dw_up) "
                               "in the places of (dx, dw_gate, dw_up, dw_down)")
    assert "transpose" not in finding.hint and "dx, dw_gate, dw_up, dw_down" in finding.hint


# students' own code for slips the catalogue did not know: each was "no simple pattern", or (for
# cross-entropy) blamed on n_counted by the simpler cases
def _model(*ending: str, imports: str = "") -> str:
    """A model_backward walked as npllama's is -- lm_head, final norm, the blocks last to first --
    ending with the lines of `ending` (the embedding's gradient, the tied/untied head, the return;
    each part dedented on its own); `imports`: one more import line it needs."""
    return (f"{imports}\n" if imports else "") + textwrap.dedent("""
        from npllama.model import LAYER_PATHS, block_backward
        from npllama.ops.linear import linear_backward
        from npllama.ops.rmsnorm import rmsnorm_backward

        def model_backward(dlogits, cache, config):
            grads = {}
            dhidden, dW_lm = linear_backward(dlogits, cache.lm_head)
            dx, grads["model.norm.weight"] = rmsnorm_backward(dhidden, cache.norm)
            for i in reversed(range(config.num_hidden_layers)):
                dx, layer_grads = block_backward(dx, cache.layers[i])
                for path, grad in zip(LAYER_PATHS, layer_grads):
                    grads[f"model.layers.{i}.{path}.weight"] = grad
    """) + "".join(textwrap.indent(textwrap.dedent(part).strip("\n"), "    ") + "\n" for part in ending)


# dE built from dx, then the head's gradient added to it (tied) or kept apart (untied)
DE_TIED_OR_NOT = """
    if config.tie_word_embeddings:
        dE = dE + dW_lm
    else:
        grads["lm_head.weight"] = dW_lm
    grads["model.embed_tokens.weight"] = dE
    return grads
"""


NAMED_SLIPS = [
    ("cross_entropy", "not from each row at its own target", """
        def cross_entropy_backward(dloss, cache):
            probs, targets, counted, n_counted, logits_shape = cache
            d = probs.copy()
            d[:, targets] -= 1
            d *= counted[:, None]
            return (d * (dloss / max(n_counted, 1))).astype(probs.dtype).reshape(logits_shape)
    """),
    ("cross_entropy", "the one-hot is added, not subtracted", """
        def cross_entropy_backward(dloss, cache):
            probs, targets, counted, n_counted, logits_shape = cache
            d = probs.copy()
            d[np.arange(len(targets)), targets] += 1
            d *= counted[:, None] * (dloss / max(n_counted, 1))
            return d.reshape(logits_shape)
    """),
    ("softmax", "the normalisation term has the wrong sign", """
        def softmax_backward(dp, cache):
            p = cache
            return p * (dp + np.sum(dp * p, axis=-1, keepdims=True))
    """),
    ("rmsnorm", "the factor rstd in front of the bracket is missing", """
        def rmsnorm_backward(dy, cache):
            x, rstd, weight = cache
            xhat, dxhat = x * rstd, dy * weight
            dx = dxhat - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True)
            return dx, (dy * xhat).reshape(-1, x.shape[-1]).sum(0)
    """),
    ("swiglu_act", "second term has the wrong sign", """
        def swiglu_act_backward(dact, cache):
            gate, up, sig, silu = cache
            return dact * up * sig * (1 - gate * (1 - sig)), dact * silu
    """),
    # a second student, on the other exercises: each was "no simple pattern" or "concentrated on a
    # few entries"
    ("swiglu", "dgate and dup are swapped", """
        from npllama.ops.linear import linear_backward
        from npllama.ops.swiglu import swiglu_act_backward

        def swiglu_backward(dout, cache):
            gate_proj, up_proj, act, down_proj = cache
            dact, dw_down = linear_backward(dout, down_proj)
            dup, dgate = swiglu_act_backward(dact, act)
            dx_gate, dw_gate = linear_backward(dgate, gate_proj)
            dx_up, dw_up = linear_backward(dup, up_proj)
            return dx_gate + dx_up, dw_gate, dw_up, dw_down
    """),
    # the pad row is the model's convention (decoder_backward), not the op's: "every entry is 0 -- is the
    # result ever assigned?" on a one-row table told this student nothing
    ("embedding", "row 0 is set to 0", """
        def embedding_backward(dout, cache):
            tokens, weight_shape, dtype = cache
            dweight = np.zeros(weight_shape, dtype)
            np.add.at(dweight, tokens.reshape(-1), dout.reshape(-1, weight_shape[1]))
            dweight[0] = 0          # the padding token gets no gradient
            return dweight
    """),
    ("lora", "1 / (1 - p)", """
        def lora_backward(dy, cache):
            x_drop, weight, lora_A, lora_B, scaling, dropout_mask, lora_hidden = cache
            rows = lambda a: a.reshape(-1, a.shape[-1])
            d_out = scaling * dy
            dlora_B = rows(d_out).T @ rows(lora_hidden)
            d_hidden = d_out @ lora_B
            dx_drop = d_hidden @ lora_A
            if dropout_mask is not None:
                dx_drop = dx_drop * (dropout_mask > 0)     # kept or dropped
            return dy @ weight + dx_drop, rows(d_hidden).T @ rows(x_drop), dlora_B
    """),
    ("classifier", "every row at every row's pooled position", """
        def classifier_backward(dlogits, cache):
            (pooled, score_weight), last_index, hidden_shape = cache
            dhidden = np.zeros(hidden_shape, dlogits.dtype)
            dhidden[:, last_index] = dlogits @ score_weight
            return dhidden, dlogits.T @ pooled
    """),
    # the batch averaged again: dlogits already holds the loss's 1/B (was "exactly 0.3333 times")
    ("classifier", "dscore_weight averages over the rows of the batch", """
        def classifier_backward(dlogits, cache):
            (pooled, score_weight), last_index, hidden_shape = cache
            dhidden = np.zeros(hidden_shape, dlogits.dtype)
            dhidden[np.arange(len(last_index)), last_index] = dlogits @ score_weight
            return dhidden, (dlogits[:, :, None] * pooled[:, None, :]).mean(axis=0)
    """),
    # the check's D = 1 case is 0 / (1 - 1) in this file: NumPy's warning is the slip's, not news
    pytest.param("layernorm", "divided by D - 1", """
        def layernorm_backward(dy, cache):
            x, mean, rstd, weight = cache
            D = x.shape[-1]
            xhat = (x - mean) * rstd
            g = dy * weight
            dx = rstd * (g - g.sum(-1, keepdims=True) / D - xhat * (g * xhat).sum(-1, keepdims=True) / (D - 1))
            return dx, (dy * xhat).reshape(-1, D).sum(0), dy.reshape(-1, D).sum(0)
    """, id="layernorm",
                 marks=pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")),
    ("model", "replaced the lookup's gradient", _model("""
        grads["model.embed_tokens.weight"] = embedding_backward(dx, cache.embed_tokens)
        if config.tie_word_embeddings:
            grads["model.embed_tokens.weight"] = dW_lm
        else:
            grads["lm_head.weight"] = dW_lm
        return grads
    """, imports="from npllama.ops.embedding import embedding_backward")),
]


# a third student, on the assembled exercises and attention: each was "no simple pattern" (or,
# for the embedding, "concentrated on 4 of 28 entries")
BLOCK_RIGHT = """
    from npllama.ops.attention import attention_backward
    from npllama.ops.linear import linear_backward
    from npllama.ops.rmsnorm import rmsnorm_backward
    from npllama.ops.rope import rope_backward
    from npllama.ops.swiglu import swiglu_backward

    def block_backward(dout, cache):
        sa = cache.self_attn
        B, T, D = dout.shape
        def attention_branch(d_out):
            d_merged, g_o = linear_backward(d_out, sa.o_proj)
            d_a = d_merged.reshape(B, T, sa.n_heads, sa.head_dim).transpose(0, 2, 1, 3)
            dq_rot, dk_rot, dv = attention_backward(d_a, sa.attention)
            dq, dk = rope_backward(dq_rot, sa.q_rope), rope_backward(dk_rot, sa.k_rope)
            merge = lambda g: g.transpose(0, 2, 1, 3).reshape(B, T, -1)
            dxn_q, g_q = linear_backward(merge(dq), sa.q_proj)
            dxn_k, g_k = linear_backward(merge(dk), sa.k_proj)
            dxn_v, g_v = linear_backward(merge(dv), sa.v_proj)
            d_in, g_in = rmsnorm_backward(dxn_q + dxn_k + dxn_v, cache.input_layernorm)
            return d_out + d_in, (g_in, g_q, g_k, g_v, g_o)
        def mlp_branch(d_out):
            d_hn, g_gate, g_up, g_down = swiglu_backward(d_out, cache.mlp)
            d_in, g_post = rmsnorm_backward(d_hn, cache.POST_NORM)
            return d_out + d_in, (g_post, g_gate, g_up, g_down)
        BRANCHES
        return dx, grads_attn + grads_mlp
"""


def _block(post_norm="post_attention_layernorm", attention_first=False):
    """BLOCK_RIGHT with the post-attention norm's backward given `post_norm`'s cache, and the two
    branches walked in the forward's order when attention_first."""
    order = ("dh, grads_attn = attention_branch(dout)", "dx, grads_mlp = mlp_branch(dh)") if attention_first \
        else ("dh, grads_mlp = mlp_branch(dout)", "dx, grads_attn = attention_branch(dh)")
    return BLOCK_RIGHT.replace("POST_NORM", post_norm).replace("BRANCHES", "\n        ".join(order))


ATTENTION_MASKED_IN_BACKWARD = """
    def attention_backward(dout, cache):
        q, k, v, P, scale, n_rep = cache
        B, H, T, hd = q.shape
        KVH, S = k.shape[1], k.shape[2]
        kk, vv = np.repeat(k, n_rep, axis=1), np.repeat(v, n_rep, axis=1)
        dP = dout @ vv.swapaxes(-1, -2)
        dS = P * (dP - (dP * P).sum(-1, keepdims=True))
        dS = dS * np.tril(np.ones((T, S)), {diagonal})       # no gradient to keys after the query
        dq = scale * dS @ kk
        dk = (scale * dS.swapaxes(-1, -2) @ q).reshape(B, KVH, n_rep, S, hd).sum(2)
        dv = (P.swapaxes(-1, -2) @ dout).reshape(B, KVH, n_rep, S, hd).sum(2)
        return dq, dk, dv
"""
NAMED_SLIPS += [
    ("block", "the attention sub-layer's backward was taken first", _block(attention_first=True)),
    ("block", "post-attention norm's backward was given the input norm's cache", _block("input_layernorm")),
    ("model", "got the gradient of only one of its occurrences", _model("""
        dE = np.zeros((config.vocab_size, dx.shape[-1]))
        dE[cache.embed_tokens.tokens.reshape(-1)] += dx.reshape(-1, dx.shape[-1])
    """, DE_TIED_OR_NOT)),
    ("attention", "the causal mask your backward applies leaves out the diagonal",
     ATTENTION_MASKED_IN_BACKWARD.format(diagonal=-1)),
    ("attention", "a causal mask of its own", ATTENTION_MASKED_IN_BACKWARD.format(diagonal=0)),
    # two more block slips that were "no simple pattern"
    ("block", "unpacked as dq, dv, dk", _block().replace("dq_rot, dk_rot, dv = attention_backward",
                                                           "dq_rot, dv, dk_rot = attention_backward")),
    ("block", "post-attention norm's backward was given dout", _block().replace("rmsnorm_backward(d_hn,",
                                                                                "rmsnorm_backward(d_out,")),
    ("attention", "dk takes the gradient of only the first query head of each group (dv sums them)",
     ATTENTION_MASKED_IN_BACKWARD.replace(" * np.tril(np.ones((T, S)), {diagonal})", "").replace(
         "dk = (scale * dS.swapaxes(-1, -2) @ q).reshape(B, KVH, n_rep, S, hd).sum(2)",
         "dk = (scale * dS.swapaxes(-1, -2) @ q)[:, ::n_rep]")),
]


@pytest.mark.parametrize("op,phrase,body", NAMED_SLIPS,
                         ids=[None if hasattr(slip, "marks") else slip[0] for slip in NAMED_SLIPS])
def test_a_common_slip_is_named(op, phrase, body, tmp_path):
    path = tmp_path / f"{op}_backward.py"
    path.write_text("import numpy as np\n\n\n" + textwrap.dedent(body).strip() + "\n")
    report = check_file(op, path, n_random=1)
    assert report.first_failure.status == "fail", report.format()
    assert phrase in report.first_failure.finding.message, report.format()
    if phrase == "not from each row at its own target":
        assert "not d[:, targets]" in report.first_failure.finding.ladder
    if phrase == "got the gradient of only one of its occurrences":
        # the ladder's cases had distinct tokens: it passed them all and said nothing
        assert "fails with a token that occurs twice" in report.first_failure.finding.ladder, report.format()


ATTENTION_BY_HEAD = """
    def attention_backward(dout, cache):
        q, k, v, P, scale, n_rep = cache
        B, H, T, hd = q.shape
        KVH, S = k.shape[1], k.shape[2]
        dq = np.zeros(q.shape, dtype=q.dtype)
        dk = np.zeros(k.shape, dtype=k.dtype)
        dv = np.zeros(v.shape, dtype=v.dtype)
        for b in range(B):
            for h in range(H):
                g = h // n_rep
                p = P[b, h]
                dp = (dout[b, h] @ v[b, g].T) * (p > 0)
                ds = p * (dp - (dp * p).sum(-1, keepdims=True))
                dq[b, h] = scale * ds @ k[b, g]
                dk[b, g] += scale * ds.T @ q[b, h]
                dv[b, g] += p.T @ dout[b, h]
        return dq, dk, dv
"""
ATTENTION_BY_EINSUM = """
    def attention_backward(dout, cache):
        q, k, v, P, scale, n_rep = cache
        B, H, T, hd = q.shape
        KVH, S = k.shape[1], k.shape[2]
        qg = q.reshape(B, KVH, n_rep, T, hd)
        Pg = P.reshape(B, KVH, n_rep, T, S)
        dog = dout.reshape(B, KVH, n_rep, T, hd)
        dP = np.einsum('bgrtd,bgsd->bgrts', dog, v)
        dS = Pg * (dP - np.einsum('bgrts,bgrts->bgrt', dP, Pg)[..., None])
        dq = scale * np.einsum('bgrts,bgsd->bgrtd', dS, k).reshape(B, H, T, hd)
        dk = scale * np.einsum('bgrts,bgrtd->bgsd', dS, qg)
        dv = np.einsum('bgrts,bgrtd->bgsd', Pg, dog)
        return dq, dk, dv
"""
MODEL_BY_BINCOUNT = _model("""
    tokens = cache.embed_tokens.tokens
    V, D = cache.embed_tokens.weight_shape
    flat = tokens.reshape(-1)
    dxf = dx.reshape(-1, D)
    dE = np.stack([np.bincount(flat, weights=dxf[:, j], minlength=V) for j in range(D)], axis=1).astype(dx.dtype)
""", DE_TIED_OR_NOT)


# right answers written otherwise than npllama's: a block in two closures (its own order of the
# nine gradients put back by the return), an attention that masks d_attn_scores by attn_probs > 0
# (harmless: they are 0 there already)
RIGHT_IN_ANOTHER_STYLE = [
    ("block", _block()),
    ("attention", ATTENTION_MASKED_IN_BACKWARD.replace("np.tril(np.ones((T, S)), {diagonal})", "(P > 0)")),
    # a loop over heads that masks d_attn_probs (not d_attn_scores) by P > 0, also harmless; einsum
    ("attention", ATTENTION_BY_HEAD),
    ("attention", ATTENTION_BY_EINSUM),
    # dE by np.bincount per column, not np.add.at
    ("model", MODEL_BY_BINCOUNT),
]


@pytest.mark.parametrize("op,body", RIGHT_IN_ANOTHER_STYLE, ids=[op for op, _ in RIGHT_IN_ANOTHER_STYLE])
def test_a_right_answer_in_another_style_passes(op, body, tmp_path):
    path = tmp_path / f"{op}_backward.py"
    path.write_text("import numpy as np\n\n\n" + textwrap.dedent(body).strip() + "\n")
    report = check_file(op, path, n_random=1)
    assert report.ok, report.format()


def test_rows_left_flattened_are_told_to_reshape_not_about_an_axis_of_length_1():
    def flattened(dloss, cache):
        probs, targets, counted, n_counted, logits_shape = cache
        d = probs.copy()
        d[np.arange(len(d)), targets] -= 1
        return d * counted[:, None] * (dloss / max(n_counted, 1))      # (N, V), not logits_shape
    finding = check_function("cross_entropy", flattened, n_random=0).first_failure.finding
    assert finding.message == "dlogits has shape (6, 5), expected (2, 3, 5)"
    assert "length 1" not in finding.hint and "reshape the result back to its input's shape, (2, 3, 5)" in finding.hint

    def kept_dims(dp, cache):    # an axis of length 1 too many: that hint stays
        p = cache
        return (p * (dp - np.sum(dp * p, axis=-1, keepdims=True)))[None]
    finding = check_function("softmax", kept_dims, n_random=0).first_failure.finding
    assert "an extra or missing axis of length 1" in finding.hint


ENDLESS = """import numpy as np


def rmsnorm_backward(dy, cache):
    x, rstd, weight = cache
    dx = np.zeros_like(x)
    i = 0
    while i < x.size:
        dx.flat[i] = dy.flat[i] * rstd.flat[0]     # i += 1 forgotten
    return dx, weight
"""


def test_a_file_stopped_for_time_is_told_the_line_it_was_running(tmp_path):
    path = tmp_path / "rmsnorm_backward.py"
    path.write_text(ENDLESS)
    graded = grade_file("rmsnorm", path, n_random=0, timeout=2)
    assert graded.status == "timeout", graded.text
    assert "it was at line" in graded.text and f"of {path}: " in graded.text, graded.text
    line = int(graded.text.split("it was at line ")[1].split()[0])
    assert ENDLESS.splitlines()[line - 1].lstrip().startswith(("while i", "dx.flat[i]"))   # inside the loop


def test_what_a_file_stopped_for_time_printed_is_shown_without_the_stack_dump(tmp_path):
    # the child is killed, so it cannot be asked for its output: it comes from the output file, whose
    # end holds the stack dump the grader asked for (not the student's words)
    path = tmp_path / "rmsnorm_backward.py"
    path.write_text("def rmsnorm_backward(dy, cache):\n    print('shape of dy:', dy.shape)\n"
                    "    print('now looping', end='')\n    while True:\n        pass\n")
    graded = grade_file("rmsnorm", path, n_random=0, timeout=2)
    assert graded.status == "timeout", graded.text
    assert graded.output.startswith("your code printed 2 lines:\n  | shape of dy: ("), graded.output
    assert graded.output.endswith("  | now looping"), graded.output
    assert "most recent call first" not in graded.output and "File " not in graded.output


@pytest.mark.parametrize("check", [lambda path: check_file("softmax", path, n_random=0).load_error,
                                   lambda path: grade_file("softmax", path, n_random=0).diagnosis],
                         ids=["in_process", "sandboxed"])
def test_a_file_checked_against_the_wrong_exercise_is_told_which_one_it_is_for(tmp_path, monkeypatch, check):
    # the command to paste names the file by the path the student typed (here from the folder above
    # it), not by its name alone, which would not be found from where the student is
    (tmp_path / "week 3").mkdir()
    (tmp_path / "week 3" / "rmsnorm_backward.py").write_text(RMSNORM_RIGHT.format(returned="dx, dweight"))
    monkeypatch.chdir(tmp_path)
    said = check("week 3/rmsnorm_backward.py")
    assert said.endswith("(it defines: rmsnorm_backward); it is written for exercise rmsnorm: "
                         "npllama exercise check rmsnorm 'week 3/rmsnorm_backward.py'"), said



@pytest.mark.parametrize("misspelled", ["attention_backwards", "attn_backward", "my_attention_backward"])
def test_a_misspelled_function_beside_a_helper_named_like_another_exercise_is_not_sent_there(tmp_path, misspelled):
    # softmax_backward is the attention file's own helper: the file is for attention, its function misnamed
    path = tmp_path / "attention_backward.py"
    path.write_text("import numpy as np\n\n\ndef softmax_backward(dp, p):\n"
                    "    return p * (dp - np.sum(dp * p, -1, keepdims=True))\n\n\n"
                    f"def {misspelled}(dout, cache):\n    return None\n")
    error = check_file("attention", path, n_random=0).load_error
    assert error == (f"{path} defines no function named attention_backward (it defines: "
                     f"{', '.join(sorted([misspelled, 'softmax_backward']))})")

def test_one_array_for_several_gradients_is_told_to_return_them_all():
    from npllama.ops.rmsnorm import rmsnorm_backward

    def dx_only(dy, cache):
        return rmsnorm_backward(dy, cache)[0]
    finding = check_function("rmsnorm", dx_only, n_random=0).first_failure.finding
    assert finding.message == ("your function returned one array, of shape (2, 3, 4); it must return 2 gradients: "
                               "dx, dweight")
    assert finding.hint.endswith("return dx, dweight")


SIZE_AS_A_NUMBER = {
    "rmsnorm": """
        def rmsnorm_backward(dy, cache):
            x, rstd, weight = cache
            xhat, dxhat = x * rstd, dy * weight
            dx = rstd * (dxhat - xhat * np.sum(dxhat * xhat, axis=-1, keepdims=True) / 4)
            return dx, (dy * xhat).reshape(-1, x.shape[-1]).sum(0)
    """,
    "layernorm": """
        def layernorm_backward(dy, cache):
            x, mean, rstd, w = cache
            xh, g = (x - mean) * rstd, dy * w
            dx = rstd * (g - g.sum(-1, keepdims=True) / 5 - xh * (g * xh).sum(-1, keepdims=True) / 5)
            return dx, (dy * xh).reshape(-1, x.shape[-1]).sum(0), dy.reshape(-1, x.shape[-1]).sum(0)
    """,
}


@pytest.mark.parametrize("op", sorted(SIZE_AS_A_NUMBER))
def test_a_row_length_written_as_a_number_is_pointed_at(op, tmp_path):
    path = tmp_path / f"{op}_backward.py"
    path.write_text("import numpy as np\n\n\n" + textwrap.dedent(SIZE_AS_A_NUMBER[op]).strip() + "\n")
    finding = check_file(op, path, n_random=1).first_failure.finding
    assert "-- fails with a row of another length (D = 7): a size is written into the code as a number" \
        in finding.ladder, finding.ladder


def test_a_syntax_error_quotes_the_line(tmp_path):
    path = tmp_path / "rmsnorm_backward.py"
    path.write_text("import numpy as np\n\ndef rmsnorm_backward(dy, cache)\n    return dy, cache.weight\n")
    report = check_file("rmsnorm", path, n_random=0)
    # the message after the colon is Python's own (its words change between versions)
    assert report.load_error.startswith(f"{path} has a syntax error at line 3 "
                                        "(def rmsnorm_backward(dy, cache)): ")



def test_a_syntax_error_without_a_line_says_no_line_none(tmp_path):
    # a NUL byte in the file (a bad copy, an editor's stray byte): Python 3.11 gives no line number
    path = tmp_path / "rmsnorm_backward.py"
    path.write_bytes(b"def rmsnorm_backward(dy, cache):\n    return dy\x00\n")
    error = check_file("rmsnorm", path, n_random=0).load_error
    assert error.startswith(f"{path} has a syntax error") and "None" not in error, error

def test_none_for_one_gradient_of_several_is_not_sent_to_the_return_statement():
    from npllama.ops.swiglu import swiglu_backward

    def dw_up_left_out(dout, cache):
        dx, dw_gate, _, dw_down = swiglu_backward(dout, cache)
        return dx, dw_gate, None, dw_down
    finding = check_function("swiglu", dw_up_left_out, n_random=0).first_failure.finding
    assert finding.message == "your function returned None for dw_up"
    assert "return statement" not in finding.hint and "compute dw_up" in finding.hint


def test_an_attention_right_for_the_first_batch_element_only_is_told_so(tmp_path):
    path = tmp_path / "attention_backward.py"
    path.write_text(textwrap.dedent("""\
        import numpy as np
        from npllama.ops.softmax import softmax_backward


        def attention_backward(dout, cache):
            q, k, v, p, scale, n_rep = cache
            B, KVH, S, D = k.shape
            kr = np.repeat(k[:1], n_rep, axis=1)       # batch 0's keys for every batch element
            vr = np.repeat(v[:1], n_rep, axis=1)
            ds = softmax_backward(dout @ vr.transpose(0, 1, 3, 2), p)
            dq = ds @ kr * scale
            dkr = ds.transpose(0, 1, 3, 2) @ q * scale
            dvr = p.transpose(0, 1, 3, 2) @ dout
            return (dq, dkr.reshape(B, KVH, n_rep, S, D).sum(2), dvr.reshape(B, KVH, n_rep, S, D).sum(2))
    """))
    finding = check_file("attention", path, n_random=0).first_failure.finding
    assert finding.message.startswith("only dq[0] is right: every dq[i] with i > 0 along the first axis is wrong")
    assert "assumes the axis has length 1 (a batch of one, if it is the batch axis" in finding.hint


def test_a_weight_gradient_right_for_its_first_row_only_is_not_told_about_a_batch(tmp_path):
    # dweight's first axis is the output features, not a batch: the hint must hold for it too
    path = tmp_path / "linear_backward.py"
    path.write_text(textwrap.dedent("""\
        import numpy as np


        def linear_backward(dy, cache):
            x, weight = cache
            rows_dy, rows_x = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
            dweight = np.repeat(rows_dy[:, :1].T @ rows_x, weight.shape[0], axis=0)   # output 0's row for all
            return dy @ weight, dweight
    """))
    finding = check_file("linear", path, n_random=0).first_failure.finding
    assert finding.message.startswith("only dweight[0] is right: every dweight[i] with i > 0 along the first axis")
    assert finding.hint.startswith("code that is right for the first entry of that axis (of length 3) only"), \
        finding.hint
    assert "B = 1" not in finding.hint and not finding.hint.startswith("when the first axis is the batch")


def test_a_weight_gradient_summed_over_the_first_axis_only_is_shown_a_sum_that_fits_it(tmp_path):
    # an outer product per row summed over axis 0 alone keeps T: the hint's own expression must turn
    # what the student returned into the weight's shape (reshape(-1, in) would sum a (out, in) away)
    path = tmp_path / "linear_backward.py"
    path.write_text("def linear_backward(dy, cache):\n    x, weight = cache\n"
                    "    return dy @ weight, (dy[..., :, None] * x[..., None, :]).sum(axis=0)\n")
    finding = check_file("linear", path, n_random=0).first_failure.finding
    assert finding.message.endswith(": summed over too few axes"), finding.message
    shown = re.search(r"e\.g\. (\.reshape\([-\d, ]+\)\.sum\(axis=0\))", finding.hint)
    assert shown, finding.hint
    shapes = re.search(r"has shape (\([\d, ]+\)), expected (\([\d, ]+\))", finding.message)
    got_shape, expected_shape = eval(shapes.group(1)), eval(shapes.group(2))     # noqa: S307
    assert eval("np.zeros(got_shape)" + shown.group(1)).shape == expected_shape     # noqa: S307


def test_a_file_whose_name_starts_with_a_dash_is_checked_and_redirected_by_a_path_that_parses(tmp_path, monkeypatch):
    # the sandbox's child takes the typed path as an option's value: '-rms.py' must not be read as
    # an option of its own, and the command to paste must not hand npllama an option either
    (tmp_path / "-rms.py").write_text(RMSNORM_RIGHT.format(returned="dx, dweight"))
    monkeypatch.chdir(tmp_path)
    graded = grade_file("softmax", "./-rms.py", n_random=0)
    assert graded.status == "unusable", graded.diagnosis
    assert graded.diagnosis.endswith("it is written for exercise rmsnorm: npllama exercise check rmsnorm ./-rms.py")
    assert grade_file("rmsnorm", "-rms.py", n_random=0).ok


@pytest.mark.parametrize("check", [lambda op, path: check_file(op, path, n_random=0),
                                   lambda op, path: grade_file(op, path, n_random=0)], ids=["in_process", "sandboxed"])
@pytest.mark.parametrize("op, source, upstream", [
    # *args has no name for the upstream gradient: the exercise's own name is used, not 'args'
    ("rmsnorm", "def rmsnorm_backward(*args):\n    dy, cache = args\n    dy *= 2\n    return dy, cache[2]\n", "dy"),
    ("model", "def model_backward(*args):\n    dlogits, cache, config = args\n    dlogits *= 2\n"
              "    return {name: np.zeros(shape) for name, shape in config.param_shapes().items()}\n",
     "dlogits"),
])
def test_the_upstream_gradient_changed_in_place_is_named_for_any_first_parameter(tmp_path, check, op, source,
                                                                                   upstream):
    path = tmp_path / f"{op}_backward.py"
    path.write_text("import numpy as np\n" + source)
    report = check(op, path)
    text = report.text if hasattr(report, "text") else report.format()
    assert f"your function changed {upstream} in place" in text, text


@pytest.mark.parametrize("op, signature", [("model", "model_backward(cache, dlogits, config)"),
                                           ("block", "block_backward(cache, dout)")])
def test_an_assembled_backward_whose_first_parameter_is_called_cache_is_checked(tmp_path, op, signature):
    # the wrapper the checks call gets the student's first name and its own 'cache' second: the two
    # must not collide (inspect.Signature refused it, and the checker crashed)
    path = tmp_path / f"{op}_backward.py"
    path.write_text(f"def {signature}:\n    return None\n")
    report = check_file(op, path, n_random=0)
    assert report.load_error is None and report.first_failure is not None, report.format()
    assert report.first_failure.finding is not None, report.format()


def test_a_list_of_several_gradients_is_told_this_exercises_names_not_rmsnorms():
    from npllama.ops.attention import attention_backward

    def listed(dout, cache):
        dq, dk, dv = attention_backward(dout, cache)
        return [dq.tolist(), dk, dv]
    finding = check_function("attention", listed, n_random=0).first_failure.finding
    assert "return dq, dk, dv" in finding.hint, finding.hint
    assert "dweight" not in finding.hint, finding.hint


# each writes into one entry of its cache (a named tuple's field, or the cache array itself)
CACHE_CHANGED_IN_PLACE = [
    ("rmsnorm", "cache.x", """
        def rmsnorm_backward(dy, cache):
            x, rstd, weight = cache
            x *= rstd
            dxhat = dy * weight
            dx = rstd * (dxhat - x * np.mean(dxhat * x, axis=-1, keepdims=True))
            return dx, (dy * x).reshape(-1, x.shape[-1]).sum(0)
    """),
    ("cross_entropy", "cache.probs", """
        def cross_entropy_backward(dloss, cache):
            probs, targets, counted, n_counted, logits_shape = cache
            probs[np.arange(len(targets)), targets] -= 1
            probs *= (counted * (dloss / max(n_counted, 1)))[:, None]
            return probs.reshape(logits_shape)
    """),
    ("softmax", "the cache", """
        def softmax_backward(dp, cache):
            p = cache
            p *= dp - np.sum(dp * p, axis=-1, keepdims=True)
            return p
    """),
]


@pytest.mark.parametrize("op,changed,body", CACHE_CHANGED_IN_PLACE, ids=[c[0] for c in CACHE_CHANGED_IN_PLACE])
def test_a_cache_changed_in_place_names_the_entry_that_changed(op, changed, body, tmp_path):
    # the hint said "e.g. probs.copy()" for every exercise: rmsnorm and softmax have no probs
    path = tmp_path / f"{op}_backward.py"
    path.write_text("import numpy as np\n\n\n" + textwrap.dedent(body).strip() + "\n")
    finding = check_file(op, path, n_random=0).first_failure.finding
    assert finding.message == f"your function changed {changed} in place", finding.message
    other_fields = {"rmsnorm": "probs", "cross_entropy": "rstd", "softmax": "probs"}[op]
    assert other_fields not in finding.hint, finding.hint
    assert f"{changed.removeprefix('the ')}.copy()" in finding.hint, finding.hint



def test_gradients_named_as_swapped_are_not_also_blamed_on_the_part_a_simpler_case_adds():
    # dW_q and dW_k are both 0 with one position (one key: the softmax is constant), so the ladder's
    # first failing case is "several positions", whose usual suspect is attention or RoPE chained
    # wrongly -- not what is wrong here, and the finding already says what is
    from npllama.model import block_backward

    def q_and_k_swapped(dout, cache):
        dx, grads = block_backward(dout, cache)
        return dx, grads._replace(q_proj=grads.k_proj, k_proj=grads.q_proj)
    finding = check_function("block", q_and_k_swapped, n_random=0).first_failure.finding
    assert finding.message == "dW_q and dW_k are swapped: each holds the other's gradient"
    assert finding.ladder.startswith("passes with one position, one head -- fails with several positions")
    assert "attention" not in finding.ladder and "RoPE" not in finding.ladder, finding.ladder


def test_a_cache_entry_cached_under_two_names_is_named_by_both():
    # swiglu's forward caches x once for gate_proj and up_proj: written through up_proj.x, the first
    # entry that changed is gate_proj.x, which the student never touched
    from npllama.ops.swiglu import swiglu_backward

    def zeroes_up_proj_x(dout, cache):
        grads = swiglu_backward(dout, cache)
        cache.up_proj.x[...] = 0
        return grads
    finding = check_function("swiglu", zeroes_up_proj_x, n_random=0).first_failure.finding
    assert finding.message == ("your function changed cache.gate_proj.x in place "
                               "(the same array as cache.up_proj.x)"), finding.message


def test_the_model_exercises_changed_cache_entry_is_named_as_its_argument():
    # model_backward(dlogits, cache, config) gets the checks' ModelCacheWithConfig spread over two
    # arguments: the student's cache.norm.x is not cache.cache.norm.x
    from npllama.model import model_backward

    def doubles_norm_x(dlogits, cache, config):
        grads = model_backward(dlogits, cache, config)
        cache.norm.x[...] *= 2
        return grads
    finding = check_function("model", doubles_norm_x, n_random=0).first_failure.finding
    assert finding.message == "your function changed cache.norm.x in place", finding.message
    assert "cache.norm.x.copy()" in finding.hint and "cache.cache" not in finding.hint, finding.hint


# np.einsum refuses two things besides mismatched sizes: '...' in the operands but not in the output
# (it does not sum over the axes '...' stands for), and a number of letters that is not the operand's
# number of axes; the hint said "each letter must name axes of the same size", which is neither
EINSUM_CRASHES = [
    ("the axes '...' stands for are not summed", """
        def linear_backward(dy, cache):
            x, weight = cache
            return dy @ weight, np.einsum('...o,...i->oi', dy, x)
    """),
    ("one letter per axis", """
        def linear_backward(dy, cache):
            x, weight = cache
            return dy @ weight, np.einsum('bto,bti->oi', dy, x)
    """),
    # optimize=True checks the operands in Python, in its own words: "Einstein sum subscript b does not
    # contain the correct number of indices for operand 0."
    ("one letter per axis", """
        def linear_backward(dy, cache):
            x, weight = cache
            return dy @ weight, np.einsum('bto,bti->oi', dy, x, optimize=True)
    """),
    # x (2, 3, 3): "operand has more dimensions than subscripts given in einstein sum, but no '...' ..."
    ("one letter per axis", """
        def linear_backward(dy, cache):
            x, weight = cache
            return dy @ weight, np.einsum('no,ni->oi', dy, x)
    """),
]


@pytest.mark.parametrize("phrase,body", EINSUM_CRASHES, ids=["ellipsis_dropped", "letters_per_axis",
                                                             "letters_per_axis_optimized", "axes_beyond_letters"])
def test_an_einsum_crash_is_told_what_numpy_refused(phrase, body, tmp_path):
    path = tmp_path / "linear_backward.py"
    path.write_text("import numpy as np\n\n\n" + textwrap.dedent(body).strip() + "\n")
    finding = check_file("linear", path, n_random=0).first_failure.finding
    assert phrase in finding.hint, finding.hint
    assert "same size" not in finding.hint, finding.hint


def test_a_matrix_product_crash_after_dot_T_of_a_batch_is_told_that_T_reverses_every_axis(tmp_path):
    """dy.T @ x with x (B, T, in): .T turns dy (B, T, out) into (out, T, B), and the product crashes.
    The hint said only 'an operand needs a transpose', to a student whose operand had one."""
    path = tmp_path / "linear_backward.py"
    path.write_text("import numpy as np\n\n\ndef linear_backward(dy, cache):\n    x, weight = cache\n"
                    "    return dy @ weight, dy.T @ x\n")
    finding = check_file("linear", path, n_random=0).first_failure.finding
    assert "x (2, 3, 3)" in finding.case
    assert ".T reverses every one of them" in finding.hint and "reshape(-1" in finding.hint, finding.hint


def test_a_matrix_product_crash_without_dot_T_keeps_the_plain_hint(tmp_path):
    path = tmp_path / "linear_backward.py"
    path.write_text("import numpy as np\n\n\ndef linear_backward(dy, cache):\n    x, weight = cache\n"
                    "    rows_dy, rows_x = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])\n"
                    "    return dy @ weight, np.matmul(rows_x, rows_dy)\n")
    finding = check_file("linear", path, n_random=0).first_failure.finding
    assert "inner sizes differ" in finding.hint and "reverses every" not in finding.hint, finding.hint


# Slips close to a catalogued one whose numbers the probes must tell apart: the catalogue never
# names a slip the student did not make.  Both embedding probes ended on token 0 (zeroing the last
# token's row was "row 0 is set to 0"); both LoRA probes had p = 0.5, so 1 / (1 - p) = 2 and half
# the mask was "which entries were kept (0 or 1)".
NOT_THAT_SLIP = [
    ("attention", "causal mask", ATTENTION_MASKED_IN_BACKWARD.format(diagonal=1)),
    # the post-attention norm given both the input norm's cache and dout: neither slip alone
    ("block", "norm's backward was given", _block("input_layernorm").replace("rmsnorm_backward(d_hn,",
                                                                            "rmsnorm_backward(d_out,")),
    ("embedding", "row 0 is set to 0", """
        def embedding_backward(dout, cache):
            tokens, weight_shape, dtype = cache
            dweight = np.zeros(weight_shape, dtype)
            np.add.at(dweight, tokens.reshape(-1), dout.reshape(-1, weight_shape[1]))
            dweight[tokens.reshape(-1)[-1]] = 0          # the last token (end of text?) gets none
            return dweight
    """),
    ("lora", "which entries were kept", """
        def lora_backward(dy, cache):
            x_drop, weight, lora_A, lora_B, scaling, dropout_mask, lora_hidden = cache
            rows = lambda a: a.reshape(-1, a.shape[-1])
            d_out = scaling * dy
            d_hidden = d_out @ lora_B
            dx_drop = d_hidden @ lora_A
            if dropout_mask is not None:
                dx_drop = dx_drop * dropout_mask * 0.5     # half the mask, whatever p is
            return dy @ weight + dx_drop, rows(d_hidden).T @ rows(x_drop), rows(d_out).T @ rows(lora_hidden)
    """),
]


@pytest.mark.parametrize("op,phrase,body", NOT_THAT_SLIP, ids=[slip[0] for slip in NOT_THAT_SLIP])
def test_a_slip_close_to_a_catalogued_one_is_not_named_as_it(op, phrase, body, tmp_path):
    path = tmp_path / f"{op}_backward.py"
    path.write_text("import numpy as np\n\n\n" + textwrap.dedent(body).strip() + "\n")
    report = check_file(op, path, n_random=1)
    assert report.first_failure.status == "fail", report.format()
    assert phrase not in report.first_failure.finding.message, report.format()


@pytest.mark.parametrize("text", [
    # NumPy's words for the output, reworded (not a message of any NumPy yet): not told that an operand's
    # axes do not fit its letters
    "einstein sum output has more dimensions than subscripts given, but no '...' ellipsis provided",
    "the output has more dimensions than subscripts given in einstein sum",
])
def test_an_einsum_message_worded_otherwise_falls_back_to_the_general_hint(text):
    from npllama.exercises.runner import _einsum_hint
    assert _einsum_hint(text).startswith("an einsum whose subscripts do not fit its operands"), _einsum_hint(text)


def test_a_lora_backward_returning_a_gradient_of_the_frozen_weight_is_told_it_gets_none():
    from npllama.ops.lora import lora_backward

    def with_dweight(dy, cache):
        dx, dA, dB = lora_backward(dy, cache)
        x_drop, weight = cache[0], cache[1]
        return dx, dy.reshape(-1, dy.shape[-1]).T @ x_drop.reshape(-1, x_drop.shape[-1]), dA, dB
    finding = check_function("lora", with_dweight, n_random=0).first_failure.finding
    assert finding.message.startswith("your function returned 4 value(s); it must return 3: dx, dlora_A, dlora_B")
    assert "weight is frozen and gets no gradient (LoRA trains only lora_A and lora_B)" in finding.message, finding
    assert finding.hint.endswith("return dx, dlora_A, dlora_B"), finding.hint

    def with_extra(dy, cache):     # a 4th value of another shape: nothing said about the weight
        return (*lora_backward(dy, cache), np.zeros(3))
    finding = check_function("lora", with_extra, n_random=0).first_failure.finding
    assert "frozen" not in finding.message + finding.hint, finding


def test_a_wrong_shape_without_a_reference_names_the_dotted_input_not_the_gradient_cut():
    # with no reference backward the message says whose shape it should be: the input's own name
    # (it was the gradient's name less its first letter, ":model.x" from d:model.x)
    import dataclasses as dc

    from npllama.exercises import get_exercise
    from npllama.exercises.checks import CheckFailed, call_backward
    case = get_exercise("rmsnorm").case(dict(lead_shape=(3,), D=4, eps=0.1, seed=1))
    case = dc.replace(case, input_names=("model.x",) + tuple(case.input_names[1:]), reference=None)
    out, cache = case.run_forward()
    with pytest.raises(CheckFailed) as failed:
        call_backward(lambda dy, c: (np.zeros(5), np.zeros(4)), case.dout_for(out), cache, case)
    assert failed.value.finding.message == "grads['model.x'] has shape (5,), expected (3, 4) (the shape of model.x)"


def test_an_unnamed_slip_in_an_assembled_backward_says_which_gradients_are_right(tmp_path):
    # the attention branch's o_proj backward given the block's dout instead of dh: no catalogued
    # slip, and "48 of 48 entries are wrong (also wrong: dw_in, dW_q, dW_k, dW_v and 1 more)" left
    # the student to find which four of ten were right -- the MLP's and its norm's, so the slip is
    # after rmsnorm_backward of the post-attention norm; and the report leads with dW_o, the first
    # wrong gradient the backward reaches (it led with dx, the first input)
    body = _block().replace("linear_backward(d_out, sa.o_proj)", "linear_backward(dout, sa.o_proj)")
    path = tmp_path / "block_backward.py"
    path.write_text("import numpy as np\n\n\n" + textwrap.dedent(body).strip() + "\n")
    finding = check_file("block", path, n_random=0).first_failure.finding
    assert finding.grad == "dW_o", finding.lines()
    assert finding.what_is_wrong.endswith("right: dW_down, dW_gate, dW_up, dw_post -- every gradient the "
                                          "backward reaches before dW_o)"), finding.what_is_wrong


def test_the_repeated_token_rung_adds_only_the_repeat(tmp_path):
    # the rung was T = 3 (seed 2: tokens [1 5 1]) after rungs of T = 2: a backward right for two
    # positions only (np.add.at over a hard-coded range(2)) failed there and was told to use
    # np.add.at, not dE[tokens] += ...
    from npllama.exercises.catalogue import ModelMistakes

    base, rung = ModelMistakes.ladder[0].params, ModelMistakes.ladder[-1].params
    assert {k for k in base if base[k] != rung[k]} <= {"seed"}, rung   # (one seed has tokens repeating)
    body = _model("""
        tokens = cache.embed_tokens.tokens
        dE = np.zeros(cache.embed_tokens.weight_shape)
        for t in range(2):
            np.add.at(dE, tokens[:, t], dx[:, t])
    """, DE_TIED_OR_NOT)
    path = tmp_path / "model_backward.py"
    path.write_text("import numpy as np\n\n\n" + textwrap.dedent(body).strip() + "\n")
    report = check_file("model", path, n_random=1)
    assert not report.ok
    assert "np.add.at, not" not in report.first_failure.finding.ladder, report.format()
