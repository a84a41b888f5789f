"""The mistakes students make in each backward, as the derivation with one step altered.

For every exercise: `variant(dout, case, **knobs)` recomputes the gradients from the case's raw
inputs (not the cache, whose layout the student is learning), step by step as in
derivations/<op>.md; with no knobs it is the right answer, and each knob alters one step the way
students get it wrong.  `mistakes()` lists the alterations with a teacher's words; `probes` are the
cases on which two different mistakes never give the same numbers (every axis a different size,
B > 1, masks on, head_dim^2 != n_rep, a large eps, dloss != 1); `ladder` is a simple case and
variations of it that each add one thing.  mistakes.py does the matching.
"""
from __future__ import annotations

import math

import numpy as np

from .mistakes import Mistake, Rung


def _m(message, hint, **knobs):
    return Mistake(message, hint, knobs)


def _rows(a):
    return a.reshape(-1, a.shape[-1])


def _mean(a, axis):
    return np.mean(a) if axis == "all" else np.mean(a, axis=axis, keepdims=True)


MIXES_ROWS = "your code mixes rows of the batch: a sum or mean runs over more than one row"
# what a norm right on (N, D) rows and wrong on (B, T, D) usually does
BATCH_AXES = ("an axis counted from the front (axis=1, [0]) is not the one it was with (N, D) rows: count "
              "from the back (axis=-1), and sum the weight gradients over every leading axis "
              "(.reshape(-1, D).sum(axis=0))")

# what a norm right at the ladder's row length and wrong at another usually does
SIZE_AS_NUMBER = ("a size is written into the code as a number (the row length {D} of the cases that pass?): "
                  "take it from the arrays, x.shape[-1], or use np.mean")

# ======================================================================================================
class RMSNormMistakes:
    probes = [dict(lead_shape=(2, 3), D=5, eps=0.1, seed=11), dict(lead_shape=(4,), D=3, eps=0.3, seed=12)]
    ladder = [Rung("one row and eps = 0", dict(lead_shape=(), D=4, eps=0.0, seed=5)),
              Rung("several rows", dict(lead_shape=(3,), D=4, eps=0.0, seed=5), MIXES_ROWS),
              Rung("a large eps (0.1)", dict(lead_shape=(), D=4, eps=0.1, seed=5),
                   "eps is used wrongly: it belongs inside the square root, rstd = 1/sqrt(mean(x^2) + eps) "
                   "(the cached rstd already has it)"),
              Rung("a batch of sequences (2, 3, D)", dict(lead_shape=(2, 3), D=4, eps=0.0, seed=5), BATCH_AXES),
              Rung("a row of another length (D = 7)", dict(lead_shape=(), D=7, eps=0.0, seed=5),
                   SIZE_AS_NUMBER.format(D=4))]

    def variant(self, dy, case, rstd="right", projection="mean", row_axis=-1, dxhat="weight", dweight="xhat",
                outer_rstd=True):
        x, weight, eps = case.inputs
        ms = _mean(x * x, "all" if rstd == "global" else -1)
        r = {"right": 1 / np.sqrt(ms + eps), "global": 1 / np.sqrt(ms + eps), "no_eps": 1 / np.sqrt(ms),
             "eps_outside": 1 / (np.sqrt(ms) + eps)}[rstd]
        xhat = x * r
        g = dy * weight if dxhat == "weight" else dy
        proj = {"mean": _mean(g * xhat, row_axis), "sum": np.sum(g * xhat, -1, keepdims=True),
                "missing": 0.0, "plus": -_mean(g * xhat, row_axis)}[projection]
        dx = (r if outer_rstd else 1.0) * (g - xhat * proj)
        dw = {"xhat": np.sum(_rows(dy * xhat), 0), "x": np.sum(_rows(dy * x), 0),
              "mean": np.mean(_rows(dy * xhat), 0)}[dweight]
        return dx, dw

    def mistakes(self):
        return [
            _m("it is missing the term that comes from rstd depending on x",
               "rstd = 1/sqrt(mean(x^2) + eps) changes when any x of the row changes: differentiate it too "
               "(the projection term -xhat * mean(dxhat * xhat))", projection="missing"),
            _m("the projection term uses a sum over the row where the mean belongs",
               "d mean(x^2) / dx_j = 2 x_j / D: the 1/D survives", projection="sum"),
            _m("the projection term has the wrong sign", "rstd decreases when |x| grows: d rstd / dx_j = "
               "-rstd^3 x_j / D", projection="plus"),
            _m("the projection term's mean(dxhat * xhat) is taken over the whole array, not per row",
               "mean over the last axis with keepdims=True: each row has its own rstd", row_axis="all"),
            _m("the projection term's mean(dxhat * xhat) is taken over the first (batch) axis, not per row",
               "the mean belongs to axis=-1 (the features of one row), keepdims=True", row_axis=0),
            _m("rstd is recomputed without eps: 1/sqrt(mean(x^2))",
               "use the cached rstd, or put eps inside the square root: 1/sqrt(mean(x^2) + eps)", rstd="no_eps"),
            _m("eps is added outside the square root: 1/(sqrt(mean(x^2)) + eps)",
               "rstd = 1/sqrt(mean(x^2) + eps): eps goes inside (or use the cached rstd)", rstd="eps_outside"),
            _m("rstd is recomputed with the mean of x^2 over the whole array instead of per row",
               "np.mean(x**2, axis=-1, keepdims=True): every row is normalised by its own rms",
               rstd="global"),
            _m("the weight factor is missing from dx: the gradient reaching xhat is dy * weight",
               "y = xhat * weight, so dxhat = dy * weight before the normalisation's backward", dxhat="dy"),
            _m("the factor rstd in front of the bracket is missing from dx",
               "xhat = x * rstd: every path from x to xhat carries rstd, so dx = rstd * (dxhat - xhat * "
               "mean(dxhat * xhat))", outer_rstd=False),
            _m("dweight multiplies dy by x; it should be the normalised x (x * rstd)",
               "y = xhat * weight, so dweight = sum over rows of dy * xhat", dweight="x"),
            _m("dweight averages over the rows; it should sum them",
               "every row's y uses the same weight, so the rows' contributions add up", dweight="mean"),
        ]


# ======================================================================================================
class LayerNormMistakes:
    probes = [dict(lead_shape=(2, 3), D=5, eps=0.1, seed=11), dict(lead_shape=(4,), D=4, eps=0.3, seed=12)]
    ladder = [Rung("one row", dict(lead_shape=(), D=5, eps=1e-5, seed=5)),
              Rung("several rows", dict(lead_shape=(3,), D=5, eps=1e-5, seed=5), MIXES_ROWS),
              Rung("a large eps (0.1)", dict(lead_shape=(), D=5, eps=0.1, seed=5),
                   "eps is used wrongly: it belongs inside the square root, rstd = 1/sqrt(var + eps)"),
              Rung("a batch of sequences (2, 3, D)", dict(lead_shape=(2, 3), D=5, eps=1e-5, seed=5), BATCH_AXES),
              Rung("a row of another length (D = 7)", dict(lead_shape=(), D=7, eps=1e-5, seed=5),
                   SIZE_AS_NUMBER.format(D=5))]

    def variant(self, dy, case, stats="right", mean_term=True, var_term="mean", row_axis=-1, dxhat="weight",
                dweight="xhat", dbias="sum"):
        x, weight, bias, eps = case.inputs
        axis = "all" if stats == "global" else -1
        mu = _mean(x, axis)
        var = np.var(x, ddof=1, axis=-1, keepdims=True) if stats == "unbiased" else _mean((x - mu) ** 2, axis)
        r = {"no_eps": 1 / np.sqrt(var), "eps_outside": 1 / (np.sqrt(var) + eps)}.get(stats, 1 / np.sqrt(var + eps))
        xhat = (x - mu) * r
        g = dy * weight if dxhat == "weight" else dy
        term_mean = _mean(g, row_axis) if mean_term else 0.0
        term_var = {"mean": xhat * _mean(g * xhat, row_axis), "missing": 0.0,
                    "sum": xhat * np.sum(g * xhat, -1, keepdims=True),
                    "unbiased": xhat * np.sum(g * xhat, -1, keepdims=True) / (x.shape[-1] - 1)}[var_term]
        dx = r * (g - term_mean - term_var)
        dw = {"xhat": np.sum(_rows(dy * xhat), 0), "x": np.sum(_rows(dy * x), 0)}[dweight]
        db = {"sum": np.sum(_rows(dy), 0), "mean": np.mean(_rows(dy), 0)}[dbias]
        return dx, dw, db

    def mistakes(self):
        return [
            _m("it is missing the term that comes from the mean depending on x",
               "every x of the row moves the mean: add -mean(dxhat) (the gradient through `mean`)",
               mean_term=False),
            _m("it is missing the term that comes from the variance depending on x",
               "every x of the row moves the variance, and so rstd: add -xhat * mean(dxhat * xhat)",
               var_term="missing"),
            _m("it treats the mean and rstd as constants", "both depend on every x of the row",
               mean_term=False, var_term="missing"),
            _m("the variance term uses a sum over the row where the mean belongs",
               "d var / dx_j = 2 (x_j - mean) / D: the 1/D survives", var_term="sum"),
            _m("the variance term's sum over the row is divided by D - 1; LayerNorm's variance is the biased "
               "one, so it is divided by D", "var = mean((x - mean)^2) over the D features: d var / dx_j = "
               "2 (x_j - mean) / D, so the term is xhat * mean(dxhat * xhat)", var_term="unbiased"),
            _m("the means in dx are taken over the whole array, not per row",
               "mean over axis=-1 with keepdims=True: each row has its own mean and rstd", row_axis="all"),
            _m("the means in dx are taken over the first (batch) axis, not per row",
               "the means belong to axis=-1 (the features of one row)", row_axis=0),
            _m("rstd is recomputed without eps", "rstd = 1/sqrt(var + eps) (or use the cached rstd)",
               stats="no_eps"),
            _m("eps is added outside the square root: 1/(sqrt(var) + eps)",
               "rstd = 1/sqrt(var + eps): eps goes inside (or use the cached rstd)", stats="eps_outside"),
            _m("the mean and variance are recomputed over the whole array instead of per row",
               "np.mean(x, axis=-1, keepdims=True): every row has its own statistics", stats="global"),
            _m("the variance is recomputed unbiased (divided by D - 1); LayerNorm's is biased (divide by D)",
               "np.var(x, axis=-1) (ddof=0), or use the cached rstd", stats="unbiased"),
            _m("the weight factor is missing from dx: the gradient reaching xhat is dy * weight",
               "y = xhat * weight + bias, so dxhat = dy * weight", dxhat="dy"),
            _m("dweight multiplies dy by x; it should be the normalised xhat",
               "y = xhat * weight + bias, so dweight = sum over rows of dy * xhat", dweight="x"),
            _m("dbias averages over the rows; it should sum them", "every row adds the same bias: sum dy over rows",
               dbias="mean"),
        ]


# ======================================================================================================
class SoftmaxMistakes:
    probes = [dict(lead_shape=(2, 3), N=5, mask_fraction=0.3, seed=11), dict(lead_shape=(4,), N=3, mask_fraction=0.0,
                                                                           seed=12)]
    ladder = [Rung("one row", dict(lead_shape=(), N=4, mask_fraction=0.0, seed=5)),
              Rung("several rows", dict(lead_shape=(3,), N=4, mask_fraction=0.0, seed=5),
                   "the sum of the normalisation term runs over the wrong axis: it belongs to each row (axis=-1)"),
              Rung("masked entries (x = -inf)", dict(lead_shape=(3,), N=4, mask_fraction=0.4, seed=7),
                   "masked entries have p = 0 and must get dx = 0")]

    def variant(self, dp, case, form="right", axis=-1):
        (x,) = case.inputs
        shifted = np.where(np.isneginf(x), -np.inf, x - np.max(np.where(np.isneginf(x), -1e300, x), -1,
                                                                keepdims=True))
        e = np.exp(shifted)
        total = e.sum(-1, keepdims=True)
        p = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
        s = np.sum(dp * p) if axis == "all" else np.sum(dp * p, axis=axis, keepdims=True)
        return {"right": p * (dp - s), "no_sum": p * dp, "no_p": dp - s, "plus": p * (dp + s),
                "logsoftmax": dp - p * np.sum(dp, -1, keepdims=True),
                "diagonal": dp * p * (1 - p)}[form]

    def mistakes(self):
        return [
            _m("it is missing the term from the normalisation (the sum in the denominator)",
               "every p_j depends on every x_i through sum(exp(x)): dx = p * (dp - sum(dp * p, -1))", form="no_sum"),
            _m("the factor p in front is missing", "d p_j / d x_i = p_i (delta_ij - p_j): every term carries p_i",
               form="no_p"),
            _m("the normalisation term has the wrong sign: p * (dp + sum(dp * p)) where p * (dp - sum(dp * p)) "
               "belongs", "d p_j / d x_i = p_i (delta_ij - p_j): the off-diagonal part -p_i p_j is negative",
               form="plus"),
            _m("only the diagonal of the softmax's Jacobian was used (dx = dp * p * (1 - p)): every p_j "
               "depends on every x_i, not only on x_j",
               "d p_j / d x_i = p_j (delta_ij - p_i): the off-diagonal terms -p_i p_j sum to -p_i * sum(dp * p), "
               "so dx = p * (dp - sum(dp * p, -1))", form="diagonal"),
            _m("this is log-softmax's backward (dp - p * sum(dp)), not softmax's",
               "for p = softmax(x): dx = p * (dp - sum(dp * p, -1)); the log-softmax formula belongs to log p",
               form="logsoftmax"),
            _m("the sum of the normalisation term runs over the first axis, not over each row",
               "sum(dp * p, axis=-1, keepdims=True): the softmax normalises each row", axis=0),
            _m("the sum of the normalisation term runs over the rows (axis -2), not within each row",
               "sum(dp * p, axis=-1, keepdims=True): the softmax normalises along the last axis", axis=-2),
            _m("the sum of the normalisation term runs over the whole array, not over each row",
               "sum(dp * p, axis=-1, keepdims=True): each row has its own sum", axis="all"),
        ]


# ======================================================================================================
def _attention_allowed(B, T, S, causal, key_padding_mask, q_offset, use_causal=True, use_padding=True):
    allowed = np.ones((B, 1, T, S), dtype=bool)
    if causal and use_causal:
        allowed &= (np.arange(S)[None, :] <= q_offset + np.arange(T)[:, None])[None, None]
    if key_padding_mask is not None and use_padding:
        allowed &= key_padding_mask[:, None, None, :]
    return allowed


class AttentionMistakes:
    probes = [dict(B=2, KVH=2, n_rep=3, T=3, head_dim=5, causal=True, q_offset=2, S=0, padding=True, seed=11),
              dict(B=2, KVH=1, n_rep=2, T=2, head_dim=3, causal=False, q_offset=0, S=4, padding=True, seed=12),
              dict(B=1, KVH=3, n_rep=2, T=4, head_dim=6, causal=True, q_offset=0, S=0, padding=False, seed=13)]
    _base = dict(B=1, KVH=1, n_rep=1, T=3, head_dim=4, causal=False, q_offset=0, S=3, padding=False, seed=5)
    ladder = [Rung("one head and B = 1 without a mask", _base),
              Rung("a causal mask", {**_base, "causal": True},
                   "the causal mask is wrong in your backward: keys after the query must get no gradient"),
              Rung("padding keys", {**_base, "padding": True, "seed": 8},
                   "padding keys (key_padding_mask False) must get no gradient"),
              Rung("two query heads sharing one kv head (n_rep = 2)", {**_base, "n_rep": 2},
                   "the kv head shared by a group is handled wrongly: dk, dv must add up the n_rep query heads "
                   "that read it"),
              Rung("two kv heads of two query heads each", {**_base, "KVH": 2, "n_rep": 2},
                   "query head h reads kv head h // n_rep (repeat-interleave), not h % KVH (tile)"),
              Rung("B = 2", {**_base, "B": 2}, MIXES_ROWS),
              Rung("fewer queries than keys (T = 2, S = 4)", {**_base, "T": 2, "S": 4},
                   "T and S are mixed up: attn_probs is (T, S), so dq uses it as is and dk, dv its transpose")]

    def variant(self, dout, case, mask="both", kv="repeat", group="sum", scale="once", softmax="right",
                only=None, backward_tril=None, group_of=None):
        """scale: how dq and dk are scaled ("once" is right); only: the one of them ("dq", "dk") where
        that happens, the other scaled right; backward_tril: d_attn_scores multiplied by a causal
        mask the backward builds itself, np.tril(np.ones((T, S)), backward_tril) (None: no such mask,
        right -- attn_probs already hold the forward's); group: how the per-query-head dk, dv are folded
        back to the kv heads ("sum" over the heads the backward read, "repeat" over the right ones
        whatever it read, "tile", "mean", "first", "none"); group_of: the one of dk, dv that `group`
        folds back, the other summed right."""
        q, k, v = case.inputs
        kw = case.kwargs
        B, H, T, hd = q.shape
        KVH, S = k.shape[1], k.shape[2]
        n_rep = H // KVH
        repeat = np.arange(H) // n_rep                   # query head h reads kv head h // n_rep
        heads = repeat if kv == "repeat" else np.arange(H) % KVH   # ... or the backward's wrong idea of it
        k_h, v_h = k[:, heads], v[:, heads]                                   # (B, H, S, hd)
        s = 1 / math.sqrt(hd)
        scores = q @ k[:, repeat].swapaxes(-1, -2) * s   # the forward's scores (the cache's attn_probs)
        causal = kw["causal"] or mask == "always_causal"
        allowed = _attention_allowed(B, T, S, causal, kw["key_padding_mask"], kw["q_offset"] if kw["causal"] else S - T,
                                     use_causal=mask in ("both", "no_padding", "always_causal"),
                                     use_padding=mask in ("both", "no_causal"))
        scores = np.where(allowed, scores, -np.inf)
        row_max = np.max(np.where(np.isneginf(scores), -1e300, scores), -1, keepdims=True)
        e = np.where(np.isneginf(scores), 0.0, np.exp(scores - row_max))
        total = e.sum(-1, keepdims=True)
        p = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
        d_p = dout @ v_h.swapaxes(-1, -2)
        d_scores = {"right": p * (d_p - np.sum(d_p * p, -1, keepdims=True)), "none": d_p, "no_sum": p * d_p,
                    "query_axis": p * (d_p - np.sum(d_p * p, -2, keepdims=True)),
                    "diagonal": d_p * p * (1 - p)}[softmax]
        if backward_tril is not None:
            d_scores = d_scores * np.tril(np.ones((T, S)), backward_tril)
        factor = {"once": s, "missing": 1.0, "twice": s * s, "on_dv": s, "inverted": 1 / s}[scale]
        factor_q, factor_k = (factor if only in (None, name) else s for name in ("dq", "dk"))
        dq = d_scores @ k_h * factor_q
        dk_h = d_scores.swapaxes(-1, -2) @ q * factor_k
        dv_h = p.swapaxes(-1, -2) @ dout * (s if scale == "on_dv" else 1.0)
        if group == "none":
            return dq, dk_h, dv_h

        def reduce(per_head, how):
            if how == "first":            # one query head per group stands for all of them
                return per_head[:, [list(heads).index(g) for g in range(KVH)]]
            # the kv head each query head's gradient is added to: the one it read, the backward's
            # wrong idea of the grouping when only the fold back is tiled, or (how "repeat") the
            # right one however the heads were read
            fold = {"tile": np.arange(H) % KVH, "repeat": repeat}.get(how, heads)
            out = np.zeros((B, KVH, S, hd))
            for h in range(H):
                out[:, fold[h]] += per_head[:, h]
            return out / n_rep if how == "mean" else out
        return dq, *(reduce(per_head, group if group_of in (None, name) else "sum")
                     for name, per_head in (("dk", dk_h), ("dv", dv_h)))

    def mistakes(self):
        return [
            _m("the 1/sqrt(head_dim) scale of the scores is missing from dq and dk",
               "attn_scores = q k^T * scale: the scale multiplies d_attn_scores on its way back to q and k",
               scale="missing"),
            _m("the 1/sqrt(head_dim) scale is applied twice in dq and dk", "multiply by scale once",
               scale="twice"),
            *[_m(f"the 1/sqrt(head_dim) scale of the scores is missing from {g} (the other gradient has it)",
                 "attn_scores = q k^T * scale: both dq and dk come from d_attn_scores, so both carry scale once",
                 scale="missing", only=g) for g in ("dq", "dk")],
            *[_m(f"the 1/sqrt(head_dim) scale is applied twice in {g}", "multiply by scale once", scale="twice",
                 only=g) for g in ("dq", "dk")],
            _m("dq and dk are multiplied by sqrt(head_dim) instead of 1/sqrt(head_dim)",
               "scale = 1 / sqrt(head_dim)", scale="inverted"),
            _m("the scale is also applied to dv; only the scores are scaled",
               "out = attn_probs @ v has no scale: dv = attn_probs^T @ dout", scale="on_dv"),
            _m("dk and dv average the n_rep query heads of a group; they must sum them",
               "each query head that reads kv head g adds its gradient to dk[g], dv[g]: sum, do not divide by n_rep",
               group="mean"),
            _m("dk and dv are not summed over the n_rep query heads that share each kv head",
               "dk and dv have the shape of k and v, (B, KVH, S, head_dim): sum the gradients of the "
               "n_rep query heads that share each kv head (they are heads g*n_rep .. g*n_rep+n_rep-1)",
               group="none"),
            _m("dk and dv take the gradient of only the first query head of each group",
               "every one of the n_rep query heads that read kv head g adds to dk[g], dv[g]: sum over the group",
               group="first"),
            *[_m(f"{g} takes the gradient of only the first query head of each group ({other} sums them)",
                 f"every one of the n_rep query heads that read kv head g adds to {g}[g], as to {other}[g]: "
                 f"sum over the group", group="first", group_of=g) for g, other in (("dk", "dv"), ("dv", "dk"))],
            _m("dk and dv are folded back to the kv heads by tiling (query head h added to kv head h % KVH); "
               "query head h read kv head h // n_rep, so that is where its gradient belongs",
               "sum each block of n_rep consecutive query heads: per_head.reshape(B, KVH, n_rep, S, head_dim)"
               ".sum(axis=2), not reshape(B, n_rep, KVH, S, head_dim).sum(axis=1)", group="tile"),
            # tiled where k and v are read, and folded back the same way or (a student who wrote the
            # derivation's reshape(B, KVH, n_rep, S, hd).sum(2)) the right way
            *[_m("the kv heads are tiled (query head h reads kv head h % KVH); LLaMA repeat-interleaves them "
                 f"(query head h reads kv head h // n_rep){where}",
                 "np.repeat(k, n_rep, axis=1), not np.tile: heads g*n_rep .. g*n_rep+n_rep-1 share kv head g",
                 kv="tile", group=fold)
              for fold, where in (("sum", ""), ("repeat", " where k and v are read (your fold back of dk, dv to "
                                                          "the kv heads is right)"))],
            _m("the attention probabilities are recomputed without any mask",
               "use the cached attn_probs (0 where masked), or apply the causal and padding masks before the "
               "softmax", mask="none"),
            _m("the attention probabilities are recomputed without the padding mask",
               "padding keys (key_padding_mask False) must get -inf scores before the softmax, or use the "
               "cached attn_probs", mask="no_padding"),
            _m("the attention probabilities are recomputed without the causal mask",
               "a query at position t sees keys 0 .. q_offset + t only: use the cached attn_probs",
               mask="no_causal"),
            _m("the attention probabilities are recomputed with a causal mask only: it is applied even when "
               "causal=False, and the padding mask is missing", "use the cached attn_probs: they already hold "
               "the right masks", mask="always_causal"),
            _m("the softmax backward is missing: d_attn_probs was used as d_attn_scores",
               "attn_probs = softmax(attn_scores): d_attn_scores = p * (d_attn_probs - sum(d_attn_probs * p))",
               softmax="none"),
            _m("the softmax backward is missing its normalisation term",
               "d_attn_scores = p * (d_attn_probs - sum(d_attn_probs * p, -1)): the sum term is missing",
               softmax="no_sum"),
            _m("the softmax backward uses only the diagonal of its Jacobian (d_attn_probs * p * (1 - p)): every "
               "probability of a row depends on every score of the row",
               "d_attn_scores = p * (d_attn_probs - sum(d_attn_probs * p, -1, keepdims=True)): the off-diagonal "
               "terms -p_r p_s add up to the sum term", softmax="diagonal"),
            _m("the softmax backward sums over the queries (axis -2) instead of over the keys (axis -1)",
               "each row of attn_probs (one query) is a softmax over the keys: sum(d_attn_probs * p, axis=-1)",
               softmax="query_axis"),
            _m("the causal mask your backward applies leaves out the diagonal (np.tril(..., -1)): a query "
               "attends to its own key too",
               "no mask is needed in the backward: attn_probs is 0 wherever the forward masked, so "
               "d_attn_scores = p * (...) is 0 there already", backward_tril=-1),
            _m("your backward multiplies d_attn_scores by a causal mask of its own, np.tril(np.ones((T, S))): "
               "it is wrong when causal=False and when the queries start at q_offset > 0",
               "no mask is needed in the backward: attn_probs is 0 wherever the forward masked (causal, "
               "padding, q_offset), so d_attn_scores = p * (...) is 0 there already", backward_tril=0),
        ]


# ======================================================================================================
class CrossEntropyMistakes:
    probes = [dict(lead_shape=(2, 3), V=5, ignore_fraction=0.5, seed=11),
              dict(lead_shape=(4,), V=3, ignore_fraction=0.5, seed=12)]
    ladder = [Rung("one position", dict(lead_shape=(), V=4, ignore_fraction=0.0, seed=5)),
              Rung("several positions", dict(lead_shape=(3,), V=4, ignore_fraction=0.0, seed=5),
                   "the loss is a mean over the counted positions (divide by n_counted), and each row takes "
                   "the 1 of its own target only (d[np.arange(N), targets] -= 1, not d[:, targets])"),
              Rung("ignored targets (-100)", dict(lead_shape=(4,), V=4, ignore_fraction=0.5, seed=6),
                   "ignored positions must get no gradient, and n_counted counts only the others")]

    def variant(self, dloss, case, mask=True, count="counted", use_dloss=True, form="right"):
        logits, targets, ignore = case.inputs
        V = logits.shape[-1]
        z = _rows(logits)
        t = targets.reshape(-1)
        counted = t != ignore
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        safe_targets = np.where(counted, t, 0)
        onehot = np.eye(V)[safe_targets]
        # d[:, safe_targets] -= 1: every row loses 1 at each column some row targets (once per column)
        every_targets_column = np.broadcast_to(np.isin(np.arange(V), safe_targets), p.shape)
        g = {"right": p - onehot, "no_onehot": p, "onehot_added": p + onehot, "log_probs": np.log(p) - onehot,
             "columns_of_all_targets": p - every_targets_column}[form]
        if mask:
            g = g * counted[:, None]
        n_counted = max(int(counted.sum()), 1)
        n = {"counted": n_counted, "all": t.size, "none": 1, "twice": n_counted ** 2}[count]
        scale = float(dloss) if use_dloss else 1.0
        return (scale * g / n).reshape(logits.shape)

    def mistakes(self):
        return [
            _m("ignored positions (target = -100) received gradient",
               "multiply each row by `counted`: an ignored target contributes nothing to the loss", mask=False),
            _m("it is divided by every position, ignored ones included: divide by n_counted, not by N",
               "the loss is the mean over counted targets only", count="all"),
            _m("the 1/n_counted of the mean is missing: the loss is a mean, divide by the number of counted "
               "targets", "dlogits = dloss * (probs - onehot) / n_counted", count="none"),
            _m("it is divided by n_counted twice: the mean's 1/n_counted belongs in it once",
               "divide once, at one place: dlogits = dloss * (probs - onehot) * counted / n_counted (the "
               "cached probs are not divided yet)", count="twice"),
            _m("dloss is ignored: the result must be multiplied by dloss",
               "chain rule: d objective / d logits = dloss * d loss / d logits", use_dloss=False),
            _m("the one-hot of the target is not subtracted: dlogits = probs - onehot(target)",
               "loss = logsumexp(logits) - logits[target]: the second term gives -1 at the target", form="no_onehot"),
            _m("the one-hot is added, not subtracted: dlogits = probs - onehot(target), so each row's target "
               "entry gets probs - 1",
               "loss = logsumexp(logits) - logits[target]: the second term gives -1 at the target "
               "(d[np.arange(N), targets] -= 1)", form="onehot_added"),
            _m("log-probabilities were used where the probabilities belong",
               "d logsumexp(z) / dz = softmax(z) = probs, not log(probs)", form="log_probs"),
            _m("the one-hot was subtracted with d[:, targets] -= 1: that takes 1 from every row at every "
               "target's column, not from each row at its own target",
               "pair each row with its own target: d[np.arange(len(d)), targets] -= 1",
               form="columns_of_all_targets"),
            _m("ignored positions received gradient and the mean divides by every position",
               "multiply rows by `counted` and divide by n_counted", mask=False, count="all"),
        ]


# ======================================================================================================
class LinearMistakes:
    probes = [dict(lead_shape=(2, 3), n_in=4, n_out=4, seed=11), dict(lead_shape=(3,), n_in=3, n_out=3, seed=12)]
    ladder = [Rung("a single vector x", dict(lead_shape=(), n_in=3, n_out=4, seed=5)),
              Rung("several rows of x", dict(lead_shape=(3,), n_in=3, n_out=4, seed=5),
                   "dweight must add the outer products dy^T x of every row"),
              Rung("a batch of sequences (2, 3, in)", dict(lead_shape=(2, 3), n_in=3, n_out=4, seed=5),
                   "dweight must sum over every leading axis (reshape to (-1, in) and (-1, out) first)")]

    def variant(self, dy, case, dweight="sum", dx="right"):
        x, w = case.inputs
        gx = dy @ (w if dx == "right" else w.T)   # weight.T: only a square weight lets it run
        rows_dy, rows_x = _rows(dy), _rows(x)
        gw = {"sum": rows_dy.T @ rows_x, "mean": rows_dy.T @ rows_x / rows_x.shape[0],
              "transposed": rows_x.T @ rows_dy,
              "last_row": np.outer(rows_dy[-1], rows_x[-1])}[dweight]
        return gx, gw

    def mistakes(self):
        return [
            _m("dx multiplies dy by weight.T; y = x @ weight.T, so dx = dy @ weight",
               "weight is (out, in): dy (..., out) @ weight (out, in) gives (..., in)", dx="transposed"),
            _m("dweight averages over the rows of x; it should sum them",
               "each row adds its outer product dy^T x: no division by the number of rows", dweight="mean"),
            _m("dweight is the transpose: x^T dy has shape (in, out)",
               "weight is (out, in) as in PyTorch: dweight = dy^T x", dweight="transposed"),
            _m("dweight only has the last row's outer product: the rows of the batch are not summed",
               "dweight = sum over every row n of outer(dy[n], x[n])", dweight="last_row"),
        ]


# ======================================================================================================
class EmbeddingMistakes:
    # seed 15: tokens [3 2 2 3 0 1] -- the first probe's start and end on token 0, this one on neither
    # (zeroing row 0 is then not zeroing the first or last token's row)
    probes = [dict(lead_shape=(2, 5), V=3, D=2, seed=11, same_id=False), dict(lead_shape=(6,), V=4, D=3, seed=15)]
    ladder = [Rung("distinct token ids", dict(lead_shape=(1,), V=4, D=3, seed=5)),
              Rung("a token id that occurs twice", dict(lead_shape=(2, 5), V=3, D=2, seed=1, same_id=True),
                   "every occurrence of a token adds its row of dout: np.add.at, not dweight[ids] += ...")]

    def variant(self, dout, case, repeats="add", zeroed_row=None):
        """zeroed_row: a row set to 0 afterwards, as if its id were padding."""
        tokens, weight = case.inputs
        V, D = weight.shape
        ids, rows = tokens.reshape(-1), dout.reshape(-1, D)
        dw = np.zeros((V, D))
        if repeats == "last":
            dw[ids] = rows
        elif repeats == "once":
            dw[ids] += rows
        else:
            np.add.at(dw, ids, rows)
            if repeats == "mean":
                counts = np.bincount(ids, minlength=V)[:, None]
                dw = np.divide(dw, counts, out=np.zeros_like(dw), where=counts > 0)
        if zeroed_row is not None:
            dw[zeroed_row] = 0
        return dw

    def mistakes(self):
        return [
            _m("a token id that occurs several times got the gradient of only one of its occurrences",
               "`dweight[tokens] += dout` adds once per distinct id; np.add.at(dweight, ids, rows) adds every "
               "occurrence", repeats="once"),
            _m("a repeated token id's rows of dout are averaged; they must be summed",
               "every occurrence adds its own gradient: np.add.at, without dividing by the count",
               repeats="mean"),
            _m("dweight's row 0 is set to 0 as if id 0 were padding, but the tokens read it",
               "the op has no padding row: every row a token read gets its gradient (the model, not "
               "embedding_backward, zeroes pad_token_id's row to match transformers)", zeroed_row=0),
        ]


# ======================================================================================================
def _sigmoid(z):
    return 0.5 * (1 + np.tanh(0.5 * z))


class SwiGLUActMistakes:
    probes = [dict(shape=(2, 3), seed=11), dict(shape=(4,), seed=12)]
    ladder = []

    def variant(self, dact, case, dsilu="right", dup="silu", up_factor=True):
        gate, up = case.inputs
        s = _sigmoid(gate)
        slope = {"right": s * (1 + gate * (1 - s)), "sigmoid": s, "dsigmoid": s * (1 - s),
                 "typo": s * (1 + gate * s), "sigmoid_as_own_slope": s * (1 + gate),
                 "silu_for_gate": s * (1 + gate * s * (1 - s)), "minus": s * (1 - gate * (1 - s))}[dsilu]
        dgate = dact * slope * (up if up_factor else 1.0)
        dup_ = dact * {"silu": gate * s, "gate": gate, "sigmoid": s}[dup]
        return dgate, dup_

    def mistakes(self):
        return [
            _m("silu'(z) was taken as sigmoid(z): the derivative of z * sigmoid(z) has a second term",
               "product rule: silu'(z) = sigmoid(z) + z * sigmoid(z) * (1 - sigmoid(z))", dsilu="sigmoid"),
            _m("silu'(z) was taken as sigmoid'(z) = sigmoid(z) (1 - sigmoid(z))",
               "silu(z) = z * sigmoid(z): use the product rule", dsilu="dsigmoid"),
            _m("silu'(z) has sigmoid(z) where 1 - sigmoid(z) belongs: sigmoid(z) (1 + z sigmoid(z))",
               "silu'(z) = sigmoid(z) * (1 + z * (1 - sigmoid(z)))", dsilu="typo"),
            _m("silu'(z) was taken as sigmoid(z) (1 + z): the product rule with sigmoid's own derivative "
               "taken as sigmoid(z)", "sigmoid'(z) = sigmoid(z) (1 - sigmoid(z)), so silu'(z) = sigmoid(z) + "
               "z * sigmoid(z) * (1 - sigmoid(z))", dsilu="sigmoid_as_own_slope"),
            _m("silu'(z) uses silu(z), the forward's output, where z, its input, belongs: "
               "sigmoid(z) (1 + silu(z) (1 - sigmoid(z)))", "silu'(z) = sigmoid(z) * (1 + z * (1 - sigmoid(z))) "
               "with z = gate, the activation's input (its cache's gate), not its output silu_gate",
               dsilu="silu_for_gate"),
            _m("silu'(z)'s second term has the wrong sign: sigmoid(z) (1 - z (1 - sigmoid(z)))",
               "sigmoid'(z) = +sigmoid(z) (1 - sigmoid(z)), so silu'(z) = sigmoid(z) * (1 + z * (1 - sigmoid(z)))",
               dsilu="minus"),
            _m("dgate is missing the factor up: act = silu(gate) * up",
               "dgate = dact * up * silu'(gate)", up_factor=False),
            _m("dup uses gate where silu(gate) belongs", "act = silu(gate) * up, so dup = dact * silu(gate)",
               dup="gate"),
            _m("dup uses sigmoid(gate) where silu(gate) = gate * sigmoid(gate) belongs",
               "dup = dact * silu(gate)", dup="sigmoid"),
        ]


class SwiGLUMistakes:
    probes = [dict(lead_shape=(2, 3), D=4, F=6, seed=11), dict(lead_shape=(3,), D=3, F=5, seed=12)]
    ladder = [Rung("a single row", dict(lead_shape=(1,), D=3, F=5, seed=5)),
              Rung("several rows", dict(lead_shape=(2, 3), D=3, F=5, seed=5),
                   "the weight gradients must add the outer products of every row")]

    def variant(self, dout, case, branches="both", act=None, down="right"):
        x, w_gate, w_up, w_down = case.inputs
        gate, up = x @ w_gate.T, x @ w_up.T
        s = _sigmoid(gate)
        a = gate * s * up
        dact = dout @ w_down if down == "right" else dout @ np.ones_like(w_down)
        dgate, dup = SwiGLUActMistakes().variant(dact, type("C", (), {"inputs": [gate, up]}), **(act or {}))
        if branches == "grads_swapped":     # each projection's backward given the other's gradient
            dgate, dup, branches = dup, dgate, "both"
        dx = {"both": dgate @ w_gate + dup @ w_up, "gate": dgate @ w_gate, "up": dup @ w_up,
              "swapped": dgate @ w_up + dup @ w_gate}[branches]
        return dx, _rows(dgate).T @ _rows(x), _rows(dup).T @ _rows(x), _rows(dout).T @ _rows(a)

    def mistakes(self):
        return [
            _m("dx only has the gate branch's gradient", "x feeds two branches, gate and up: add both gradients",
               branches="gate"),
            _m("dx only has the up branch's gradient", "x feeds two branches, gate and up: add both gradients",
               branches="up"),
            _m("dx sends dgate through w_up and dup through w_gate: the weights are crossed",
               "dx = dgate @ w_gate + dup @ w_up", branches="swapped"),
            _m("dgate and dup are swapped: dup went back through the gate projection and dgate through the up "
               "projection (dx, dw_gate and dw_up are all crossed)",
               "dgate = dact * up * silu'(gate) goes into gate_proj's backward, dup = dact * silu(gate) into "
               "up_proj's (swiglu_act_backward returns them in the order (dgate, dup))", branches="grads_swapped"),
            # the activation's own mistakes, in swiglu_act's words: one list for both exercises
            *[Mistake(m.message, m.hint, dict(act=m.knobs)) for m in SwiGLUActMistakes().mistakes()],
        ]


# ======================================================================================================
class RoPEMistakes:
    probes = [dict(B=2, H=3, T=4, head_dim=6, seed=11), dict(B=1, H=2, T=3, head_dim=8, seed=12, general_tables=True)]
    ladder = [Rung("one position of one head", dict(B=1, H=1, T=1, head_dim=4, seed=5)),
              Rung("several positions", dict(B=1, H=1, T=3, head_dim=4, seed=5),
                   "row t of cos and sin belongs to position t: the tables broadcast over B and H, not over T"),
              Rung("B = 2 and two heads", dict(B=2, H=2, T=1, head_dim=4, seed=5), MIXES_ROWS),
              Rung("general cos/sin tables (not rotations)", dict(B=1, H=1, T=2, head_dim=4, seed=5,
                                                                  general_tables=True),
                   "the formula holds only when both halves of sin hold the same angles: multiply by sin "
                   "before rotating, dx = dy*cos - rotate_half(dy*sin)")]

    def variant(self, dy, case, form="right"):
        x, cos, sin = case.inputs
        half = dy.shape[-1] // 2

        def rot(a):
            return np.concatenate([-a[..., half:], a[..., :half]], -1)

        def first_half(table):          # the second half taken to repeat the first
            return np.concatenate([table[..., :half], table[..., :half]], -1)
        return {"right": dy * cos - rot(dy * sin), "forward": dy * cos + rot(dy * sin),
                "first_half": dy * first_half(cos) - rot(dy * first_half(sin)),
                "forward_applied": dy * cos + rot(dy) * sin, "swapped": dy * sin - rot(dy * cos),
                "sin_after": dy * cos - rot(dy) * sin, "no_rotation": dy * cos,
                "adjacent": dy * cos - _rotate_pairs(dy * sin)}[form]

    def mistakes(self):
        return [
            _m("you applied the rotation itself; the backward needs its transpose (the inverse rotation)",
               "rotate_half is multiplication by an antisymmetric R (R^T = -R), so the transpose of "
               "x*cos + R(x)*sin is dy*cos - R(dy*sin): the sin term changes sign", form="forward"),
            _m("you applied the forward rotation to dy; the backward needs its transpose (the inverse rotation)",
               "the transpose of x -> x*cos + R(x)*sin is dy -> dy*cos + R^T(dy*sin) = dy*cos - R(dy*sin): "
               "R^T = -R, and sin multiplies before the (transposed) rotation", form="forward_applied"),
            _m("sin is applied after rotating instead of before",
               "the transpose of x -> R(x) * sin is dy -> R^T(dy * sin); R^T(dy) * sin agrees only when both "
               "halves of sin hold the same angles", form="sin_after"),
            _m("only the first halves of cos and sin are used (as if both halves held the same angles): true of "
               "RoPE's own tables, but the op's gradient must hold for any cos and sin it is given",
               "use the whole tables: dx = dy*cos - rotate_half(dy*sin)", form="first_half"),
            _m("cos and sin are swapped: y = x*cos + rotate_half(x)*sin, so dx = dy*cos - rotate_half(dy*sin)",
               "cos multiplies x itself, sin multiplies the rotated x", form="swapped"),
            _m("the rotate_half term is missing: only dy * cos", "y = x*cos + rotate_half(x)*sin: both terms "
               "depend on x", form="no_rotation"),
            _m("the pairs are adjacent entries (x[2i], x[2i+1]), Meta's layout; this project pairs the halves "
               "(x[i], x[i + head_dim/2]) like Hugging Face", "use rotate_half: concat(-x2, x1) of the two halves",
               form="adjacent"),
        ]


def _rotate_pairs(a):
    out = np.empty_like(a)
    out[..., 0::2], out[..., 1::2] = -a[..., 1::2], a[..., 0::2]
    return out


# ======================================================================================================
class LoRAMistakes:
    probes = [dict(lead_shape=(2, 3), n_in=4, n_out=5, r=2, scaling=2.0, dropout_p=0.5, seed=11),
              # p = 0.25: the mask's 1 / (1 - p) is 4/3 here and 2 above, so no constant factor fits both
              dict(lead_shape=(3,), n_in=3, n_out=2, r=1, scaling=-1.5, dropout_p=0.25, seed=12)]
    ladder = [Rung("no dropout", dict(lead_shape=(2, 3), n_in=4, n_out=5, r=2, scaling=2.0, dropout_p=0.0, seed=5)),
              Rung("dropout on the adapter's input", dict(lead_shape=(2, 3), n_in=4, n_out=5, r=2, scaling=2.0,
                                                          dropout_p=0.5, seed=5),
                   "x_drop = x * dropout_mask feeds the adapter: its gradient and dlora_A go through the mask")]

    def variant(self, dy, case, scaling="once", dx="both", mask_dx=True, only=None):
        """scaling: how many times scaling multiplies the adapter's gradients ("once", "missing",
        "twice"); only: the one gradient ("dx", "dlora_A", "dlora_B") where that happens; mask_dx:
        whether dx's adapter path goes through the mask (True), not (False), or through its 0/1
        pattern without the 1 / (1 - p) ("kept")."""
        x, w, A, Bm, s, mask = case.inputs
        x_drop = x if mask is None else x * mask
        wrong = {"once": s, "missing": 1.0, "twice": s * s}[scaling]
        f_x, f_A, f_B = (wrong if only in (None, name) else s for name in ("dx", "dlora_A", "dlora_B"))
        hidden = x_drop @ A.T
        dB = f_B * _rows(dy).T @ _rows(hidden)
        d_hidden = dy @ Bm                                          # without scaling, applied per gradient
        dA = f_A * _rows(d_hidden).T @ _rows(x_drop)
        adapter = f_x * d_hidden @ A
        if mask is not None and mask_dx:
            adapter = adapter * ((mask > 0) if mask_dx == "kept" else mask)
        gx = {"both": dy @ w + adapter, "frozen": dy @ w, "adapter": adapter}[dx]
        return gx, dA, dB

    def mistakes(self):
        return [
            _m("the scaling factor is missing from the adapter's gradients",
               "y's adapter term is scaling * (...): scaling multiplies dy on its way into the adapter",
               scaling="missing"),
            _m("scaling is applied twice in the adapter's gradients", "multiply by scaling once", scaling="twice"),
            *[_m(f"the scaling factor is missing from {g}",
                 "y's adapter term is scaling * (...): every gradient through the adapter carries scaling once",
                 scaling="missing", only=g) for g in ("dx", "dlora_A", "dlora_B")],
            *[_m(f"scaling is applied twice in {g}", "multiply by scaling once", scaling="twice", only=g)
              for g in ("dx", "dlora_A", "dlora_B")],
            _m("dx has only the frozen path's gradient, dy @ weight",
               "x also feeds the adapter: add scaling * (dy @ lora_B) @ lora_A (times the dropout mask)",
               dx="frozen"),
            _m("dx has only the adapter path's gradient", "the frozen weight still passes gradient to x: add "
               "dy @ weight", dx="adapter"),
            _m("the adapter path of dx misses the dropout mask",
               "x_drop = x * dropout_mask, so its gradient is multiplied by the mask once more on the way to x",
               mask_dx=False),
            _m("the adapter path of dx is multiplied by which entries were kept (0 or 1), not by the mask itself, "
               "which also holds inverted dropout's 1 / (1 - p)",
               "x_drop = x * dropout_mask with the mask's values 0 and 1 / (1 - p): multiply by dropout_mask",
               mask_dx="kept"),
        ]


# ======================================================================================================
class ClassifierMistakes:
    probes = [dict(B=3, T=4, D=3, num_labels=2, seed=11), dict(B=2, T=5, D=2, num_labels=3, seed=12)]
    ladder = []

    def variant(self, dlogits, case, position="pooled", dscore_weight="sum"):
        hidden, w, last = case.inputs
        B = hidden.shape[0]
        dh = np.zeros_like(hidden, dtype=np.float64)
        rows = dlogits @ w
        if position == "pooled":
            dh[np.arange(B), last] = rows
        elif position == "end":
            dh[:, -1] = rows
        elif position == "start":
            dh[:, 0] = rows
        elif position == "every_row":     # dh[:, last]: every row b at every row's position last[b']
            dh[:, last] = rows
        else:
            dh[:] = rows[:, None, :]
        dw = dlogits.T @ hidden[np.arange(B), last]
        return dh, dw / B if dscore_weight == "mean" else dw

    def mistakes(self):
        return [
            _m("the gradient went to the last position of every row, not to last_index",
               "scatter dpooled back to hidden[arange(B), last_index]: padding moves the last real token away "
               "from the end", position="end"),
            _m("the gradient went to the first position of every row, not to last_index",
               "scatter dpooled back to hidden[arange(B), last_index], the position the forward read",
               position="start"),
            _m("dhidden[:, last_index] = ... writes to every row at every row's pooled position, not each row at "
               "its own", "pair each row with its own position: dhidden[np.arange(B), last_index] = dpooled",
               position="every_row"),
            _m("the gradient went to every position of the row; only the pooled one was read",
               "dhidden is zero except at hidden[b, last_index[b]]", position="all"),
            # the loss is a mean over the batch, and a student divides by B again here: dlogits has it
            _m("dscore_weight averages over the rows of the batch; it should sum them",
               "each row adds its outer product dlogits[b]^T pooled[b]: dscore_weight = dlogits.T @ pooled, with no "
               "division by B (the loss's mean over the batch is already in dlogits)", dscore_weight="mean"),
        ]


CATALOGUES = {"rmsnorm": RMSNormMistakes(), "layernorm": LayerNormMistakes(), "softmax": SoftmaxMistakes(),
              "attention": AttentionMistakes(), "cross_entropy": CrossEntropyMistakes(), "linear": LinearMistakes(),
              "embedding": EmbeddingMistakes(), "swiglu_act": SwiGLUActMistakes(), "swiglu": SwiGLUMistakes(),
              "rope": RoPEMistakes(), "lora": LoRAMistakes(), "classifier": ClassifierMistakes()}


# ======================================================================================================
class BlockMistakes:
    """The decoder block's backward (npllama.model.block_backward) with one connection done wrong."""

    probes = [dict(B=2, T=3, KVH=2, n_rep=2, head_dim=4, F=5, causal=True, seed=11),
              dict(B=1, T=2, KVH=1, n_rep=2, head_dim=2, F=3, causal=False, seed=12)]
    ladder = [Rung("one position, one head", dict(B=1, T=1, KVH=1, n_rep=1, head_dim=2, F=3, causal=True, seed=5)),
              Rung("several positions", dict(B=1, T=3, KVH=1, n_rep=1, head_dim=2, F=3, causal=True, seed=5),
                   "positions meet only in attention: its backward, or RoPE's, is chained wrongly"),
              Rung("two query heads per kv head", dict(B=1, T=3, KVH=1, n_rep=2, head_dim=2, F=3, causal=True, seed=5),
                   "the heads are split or merged wrongly: (B, T, H*hd) <-> (B, H, T, hd) is a reshape then a "
                   "transpose, read backwards"),
              Rung("B = 2", dict(B=2, T=3, KVH=1, n_rep=2, head_dim=2, F=3, causal=True, seed=5), MIXES_ROWS)]

    def variant(self, dout, case, residual_mlp=True, residual_attn=True, xn_from="qkv", rope="transposed",
                order="mlp_first", post_norm_cache="post_attention_layernorm", post_norm_input="dhn",
                attention_returns="qkv"):
        """order: which sub-layer's backward runs first ("mlp_first" is right: the MLP came last);
        post_norm_cache: the cache the post-attention norm's backward is given; post_norm_input:
        the gradient it is given ("dhn", swiglu_backward's, is right; "dout": the MLP branch's
        own upstream); attention_returns: the order attention_backward's result is unpacked in
        ("qkv" is right; "qvk": dq, dv, dk)."""
        from ..ops.attention import attention_backward
        from ..ops.linear import linear_backward
        from ..ops.rmsnorm import rmsnorm_backward
        from ..ops.rope import rope_backward, rope_forward
        from ..ops.swiglu import swiglu_backward

        _, cache = case.run_forward()
        a = cache.self_attn
        B, T, _ = dout.shape
        H, KVH, hd = a.n_heads, a.n_kv_heads, a.head_dim

        def mlp(d_out):
            dhn, dW_gate, dW_up, dW_down = swiglu_backward(d_out, cache.mlp)
            dh_norm, dw_post = rmsnorm_backward(dhn if post_norm_input == "dhn" else d_out,
                                                getattr(cache, post_norm_cache))
            return (d_out + dh_norm if residual_mlp else dh_norm), (dw_post, dW_gate, dW_up, dW_down)

        def attention(d_out):
            dattn, dW_o = linear_backward(d_out, a.o_proj)
            dq_rot, dk_rot, dv = attention_backward(dattn.reshape(B, T, H, hd).transpose(0, 2, 1, 3), a.attention)
            if attention_returns == "qvk":
                dk_rot, dv = dv, dk_rot
            turn = {"transposed": lambda g, c: rope_backward(g, c), "none": lambda g, c: g,
                    "forward": lambda g, c: rope_forward(g, c.cos, c.sin)[0]}[rope]
            dq, dk = turn(dq_rot, a.q_rope), turn(dk_rot, a.k_rope)
            merge = lambda g, n: g.transpose(0, 2, 1, 3).reshape(B, T, n * hd)  # noqa: E731
            dxn_q, dW_q = linear_backward(merge(dq, H), a.q_proj)
            dxn_k, dW_k = linear_backward(merge(dk, KVH), a.k_proj)
            dxn_v, dW_v = linear_backward(merge(dv, KVH), a.v_proj)
            dxn = {"qkv": dxn_q + dxn_k + dxn_v, "q": dxn_q, "qk": dxn_q + dxn_k}[xn_from]
            dx_norm, dw_in = rmsnorm_backward(dxn, cache.input_layernorm)
            return (d_out + dx_norm if residual_attn else dx_norm), (dw_in, dW_q, dW_k, dW_v, dW_o)

        if order == "mlp_first":
            dh, mlp_grads = mlp(dout)
            dx, attention_grads = attention(dh)
        else:
            dh, attention_grads = attention(dout)
            dx, mlp_grads = mlp(dh)
        return (dx, *attention_grads, *mlp_grads)

    def mistakes(self):
        return [
            _m("the residual around the MLP is missing from dh: h feeds both the norm and out = h + mlp_out",
               "dh = dout + (the post-attention norm's backward of dhn): a tensor used twice collects two "
               "gradients", residual_mlp=False),
            _m("the residual around attention is missing from dx: x feeds both the norm and h = x + attn_out",
               "dx = dh + (the input norm's backward of dxn)", residual_attn=False),
            _m("both residual paths are missing: each sub-layer's input gradient replaced the skip connection's",
               "residuals add: dh = dout + ..., dx = dh + ...", residual_mlp=False, residual_attn=False),
            _m("xn feeds the q, k and v projections, but only q's gradient reached it",
               "dxn = dxn_q + dxn_k + dxn_v", xn_from="q"),
            _m("xn feeds the q, k and v projections, but v's gradient did not reach it",
               "dxn = dxn_q + dxn_k + dxn_v", xn_from="qk"),
            _m("RoPE's backward is missing: the gradients of the rotated q and k were used as dq and dk",
               "q_rot = rope(q): dq = rope_backward(dq_rot, q_rope cache), the same for k", rope="none"),
            _m("RoPE's forward rotation was applied to dq_rot and dk_rot; the backward needs its transpose",
               "dq = rope_backward(dq_rot, ...): the inverse rotation", rope="forward"),
            _m("the attention sub-layer's backward was taken first, on dout; the MLP came last in the forward, so "
               "its backward comes first",
               "walk the forward backwards: dh = dout + (MLP branch's backward of dout), then dx = dh + (attention "
               "branch's backward of dh)", order="attention_first"),
            _m("the post-attention norm's backward was given the input norm's cache: hn = rmsnorm(h; w_post) "
               "normalised h, not x",
               "rmsnorm_backward(dhn, cache.post_attention_layernorm): each norm's backward takes its own cache",
               post_norm_cache="input_layernorm"),
            _m("the post-attention norm's backward was given dout, the gradient of the MLP branch's output; "
               "the norm's output hn is the MLP's input, so its gradient is dhn, what swiglu_backward returns",
               "dhn, dW_gate, dW_up, dW_down = swiglu_backward(dout, cache.mlp); then "
               "rmsnorm_backward(dhn, cache.post_attention_layernorm)", post_norm_input="dout"),
            _m("attention_backward's result was unpacked as dq, dv, dk: it returns dq, dk, dv (the order of "
               "its inputs q, k, v), so dv went through k's RoPE into W_k's backward and dk into W_v's",
               "dq_rot, dk_rot, dv = attention_backward(...): a backward returns its inputs' gradients in their order",
               attention_returns="qvk"),
        ]


CATALOGUES["block"] = BlockMistakes()


class ModelMistakes:
    """The whole model's backward (npllama.model.model_backward) with one connection done wrong."""

    probes = [dict(layers=2, B=2, T=3, tied=True, seed=11), dict(layers=2, B=1, T=2, tied=False, seed=12)]
    ladder = [Rung("one layer, untied embeddings", dict(layers=1, B=1, T=2, tied=False, seed=5)),
              Rung("two layers", dict(layers=2, B=1, T=2, tied=False, seed=5),
                   "the layers are chained wrongly: walk them last to first, each block's dx the next one's dout"),
              Rung("tied embeddings", dict(layers=1, B=1, T=2, tied=True, seed=5),
                   "with tie_word_embeddings E is the lookup table and W_lm: its two gradients add"),
              # seed 1: tokens [2 2], the base case with only the repeat added (T = 3 would add a
              # position too, and blame np.add.at for a backward right for two positions only)
              Rung("a token that occurs twice", dict(layers=1, B=1, T=2, tied=False, seed=1),
                   "every occurrence of a token adds its row of dx to dE: np.add.at, not dE[tokens] += ...")]

    def variant(self, dlogits, case, final_norm=True, order="reversed", tied_sum=True, repeats="add"):
        """repeats: how the lookup's gradient of E gathers a token's occurrences ("add" is right;
        "once": dE[tokens] += dx, which writes each distinct id once)."""
        from ..model import LAYER_PATHS, block_backward
        from ..ops.embedding import embedding_backward
        from ..ops.linear import linear_backward
        from ..ops.rmsnorm import rmsnorm_backward

        _, (cache, config) = case.run_forward()
        dhidden, dW_lm = linear_backward(dlogits, cache.lm_head)
        grads = {}
        if final_norm:
            dx, grads["model.norm.weight"] = rmsnorm_backward(dhidden, cache.norm)
        else:
            dx, grads["model.norm.weight"] = dhidden, rmsnorm_backward(dhidden, cache.norm)[1]
        layers = range(config.num_hidden_layers)
        for i in (reversed(layers) if order == "reversed" else layers):
            dx, layer_grads = block_backward(dx, cache.layers[i])
            for path, grad in zip(LAYER_PATHS, layer_grads):
                grads[f"model.layers.{i}.{path}.weight"] = grad
        if repeats == "add":
            grads["model.embed_tokens.weight"] = embedding_backward(dx, cache.embed_tokens)
        else:
            dE = np.zeros(cache.embed_tokens.weight_shape)
            dE[cache.embed_tokens.tokens.reshape(-1)] += dx.reshape(-1, dx.shape[-1])
            grads["model.embed_tokens.weight"] = dE
        if not config.tie_word_embeddings:
            grads["lm_head.weight"] = dW_lm
        elif tied_sum == "lm_only":
            grads["model.embed_tokens.weight"] = dW_lm
        elif tied_sum:
            grads["model.embed_tokens.weight"] = grads["model.embed_tokens.weight"] + dW_lm
        return tuple(grads[n] for n in config.param_shapes())

    def mistakes(self):
        return [
            _m("with tied embeddings E is also W_lm, but lm_head's gradient was not added to it",
               "tie_word_embeddings: grads['model.embed_tokens.weight'] = embedding_backward(...) + dW_lm",
               tied_sum=False),
            _m("with tied embeddings lm_head's gradient replaced the lookup's gradient of E; the two add",
               "tie_word_embeddings: grads['model.embed_tokens.weight'] = embedding_backward(...) + dW_lm, not "
               "= dW_lm", tied_sum="lm_only"),
            _m("the final norm's backward is skipped: dhidden went into the last block as its dout",
               "hidden = rmsnorm(x^(L); w_norm): dx^(L) = rmsnorm_backward(dhidden, cache.norm)[0]",
               final_norm=False),
            _m("the layers are walked first to last; the backward walks them last to first",
               "for i in reversed(range(config.num_hidden_layers)): dx, g = block_backward(dx, cache.layers[i])",
               order="forward"),
            _m("a token that occurs several times got the gradient of only one of its occurrences in E's "
               "gradient: dE[tokens] += dx (or =) writes each distinct id once",
               "every occurrence adds its row of dx: np.add.at(dE, tokens.reshape(-1), dx.reshape(-1, D)), or "
               "embedding_backward(dx, cache.embed_tokens)", repeats="once"),
        ]


CATALOGUES["model"] = ModelMistakes()
