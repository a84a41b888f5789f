"""Finite-difference gradient checking whose tolerance comes from an error model, at any scale.

Two ways in:

    # any scalar function of some arrays, and the gradients you computed for them
    report = gradcheck(lambda x, w: float(np.sum(f(x, w))), [x, w], [dx, dw], names=["x", "w"])

    # an op written as a forward/backward pair (out, cache) = forward(*inputs); backward(dout, cache)
    report = check_op(rmsnorm_forward, rmsnorm_backward, [x, w], extra_args=(1e-5,))

    print(report)             # per input: how it was checked, error, the bound it was held to
    report.raise_if_failed()  # AssertionError carrying that table

Work in float64.  What is compared (a "probe"): one gradient entry (x moves along one axis), or a
random direction p (every entry of x moves at once, by +-step; <grad, p> is compared with the
finite difference of f along p, so an error in any single entry changes it and cannot hide).

How a probe's numeric derivative and its bound are made (the error model):

  step      relative to the numbers: entry i moves by eps * max(|x_i|, rms(x)) (eps = 1e-4), so
            weights ~1e-10 and ~1e5 are probed alike (a fixed absolute step is not).
  D(t)      = (f(x + t p) - f(x - t p)) / (2 t), the central difference, taken at t = h and 2h.
  round-off each value of f carries ~ C * u * F of rounding (u = 2.2e-16, F = |f|, or for check_op
            the sum of |out * dout| before cancellation, C = ROUNDOFF_FACTOR); D(h) carries F*C*u / h.
  truncation D(h) - f' = f''' h^2 / 6 + ...; D(2h) has four times that, so |D(h) - D(2h)| is three
            times D(h)'s truncation error (and contains the realised round-off too).
  Richardson R = (4 D(h) - D(2h)) / 3 cancels the h^2 term; with D(4h) its own error is estimated
            from R(h) - R(2h) (= 15x it).  richardson=None uses it where it helps: the truncation
            estimate stands above the round-off, the plain bound above the relative floor, and R's
            bound comes out smaller.  True forces it, False never.
            R is used only while the differences shrink like h^2 (D(2h) - D(4h) about 4x
            D(h) - D(2h)); across a kink (relu, abs) they do not, and D(h) stands.
  bound     = 3x the truncation estimate + the round-off (|D(h) - D(2h)| + C u F / h, or
            |R(h) - R(2h)| / 5 + 1.5 C u F / h)  +  the analytic gradient's own round-off
            (C u max|grad| over all inputs: a zero gradient computed by cancelling terms is not
            exactly zero)  +  tol * magnitude  (a relative floor; magnitude is |grad_i|, or
            ||grad * p|| for a direction)  -- an entry or direction passes when
            |analytic - numeric| <= bound.  atol is an optional absolute floor, 0 by default; a pass
            that needed it is flagged in the report.
  longer    when the bound is above 1e-3 of the gradient's size (a gradient tiny next to |f|, so
  steps     f's round-off swamps the difference), the probe is taken again with longer steps
            (round-off / h falls), kept only while the bound shrinks, the estimates agree and f
            still behaves smoothly at the longer step.  A longer step whose estimate shows nothing
            but round-off (its differences within it, its value within its bound of 0 -- or, at a step
            beyond the input's own size max(|x_i|, rms(x)), within twice its bound, 1/UNRESOLVED:
            there f's bends over the window can average to a "slope" of the round-off's size, as
            C + a sum(sin(x)) with C ~ 1e8 does) decides nothing where the analytic value lies
            beyond that bound: the steps grow on for one that shows the slope (a straight f's
            does), else the last estimate that showed more stands, UNRESOLVED where it passes.  f
            not moving by a bit within the input's own size (at the step, twice it and a third of
            it) does decide: f ignores the input there (a masked entry).
            A probe where f did not behave smoothly at
            the step (its differences at h, 2h, 4h did not shrink like h^2: "rough") is first taken
            at steps 4, 16, 64 times shorter, then 16 times shorter each time, up to ~4e6 times,
            which show why: where f varies within the step (sum(sin(k x)) with k h ~ 1 to 3000)
            it is smooth at two of them in a row, its differences shrinking from one to the next
            like h^2 (at one step they can by chance), and the longer one's estimate is used; a
            relu's kink inside the step leaves f straight at one of the first three -- at a far
            longer step the differences only alias, looking smooth by chance; where f rounds
            beyond the model (a cancellation, as a GELU's 1 + tanh(z) far in its left tail) the
            differences grow as the step shrinks, or stop within one stair of its rounding, and
            the longer steps resolve it.  A probe whose bound stays above half its
            gradient (and above 1e-3 of the largest gradient in the check) is UNRESOLVED: a wrong
            gradient could not be told from a right one there, so it does not pass (the report
            says so, apart from FAIL).
            A probe that passes only next to the largest gradient (its own gradient far smaller,
            as saturated attention's dq ~1e-37 next to dv ~3) passes, with a note that its own
            gradient was effectively not checked.
  shorter   a probe that fails, or passes on a bound above 1e-3 of its gradient, where that bound
  steps     is mostly truncation (f bends within a few steps: an input far from zero whose entries
            differ by little) is taken again at steps 4, 16, 64 times shorter, kept while the bound
            shrinks and f behaves smoothly there (in each input only until a few failures are
            confirmed, as below).  Where f does not behave smoothly at the step (its differences
            do not shrink like h^2: a layer norm of 1e6 + noise, stepped by 100, saturates within
            it), 16 times shorter each time, past rough ones, down to eps times the spread
            around their mean of the entries in a line (a row, a column) with the probed one.
  failing   a probe that fails is measured again before it is called wrong: f's own rounding,
  probes    from the 4th differences of f at 7 points 1/4, 1/3 and 1 step apart, and at the step eps also 4
            and 21 (a cancellation can keep f's value over many steps, then jump; 6th differences
            there, which a smooth bend within so wide a window leaves small), and D(t) at
            t = h/64 ... 64h.  Where f rounds beyond C u F (a cancellation inside it, as 1 + tanh(z)
            for z << 0 or exp(x) - 1 for tiny x: its values move in steps far above u |f|) and
            D(h) stands out of that rounding (by 2x), the probe is first taken again at steps 16
            and 256 times longer with that measured rounding in its bound (it falls like 1/step),
            kept while f stays smooth there and the bound shrinks: that judges it, passing or
            failing (but an analytic value off by no more than f's rounding at that step is
            UNRESOLVED: a backward holding the same cancelling terms rounds as f does; by more,
            even a millionth of the largest gradient, it FAILs).  Where no longer step is kept
            and that rounding covers the difference, or where some D(t) strays from D(h) further
            than the model lets it (its truncation grows like t^2 from what D(h) - D(2h) shows,
            and beyond 4h no faster than from what the two D(t) below it show: D(h) - D(2h) can be
            f's rounding alone; its round-off falls like 1/t), or some D(t) beyond 4h strays so
            from the D(t/4) below it, by no more than a stair of f's rounding (16 u max(|f|, 1))
            across its steps (D(h)'s bound holds the model's round-off at h, which a GELU's stairs
            at x ~ -7.15, 1e3 u |f| high, stay within, while D(64h) crosses one), and the analytic
            value lies within that spread of the D(t) (less the truncation the model allows each; of a
            D(t) beyond the input's own size that bends away from the two below it at least as fast
            as t^2 -- exp far from the point -- no more than a stair of f's rounding), the probe is
            UNRESOLVED, not FAIL: the
            check cannot tell there.  Before either verdict made on such strays, or on f's
            rounding covering the difference, steps shorter than the shortest tried are looked at
            as for a rough estimate (two smooth in a row, no straight one): f varying within the step (sum(sin(k x)) at
            k h ~ 300, where every D(t) aliases and one can look smooth by chance) is judged
            there, passing or failing.  Where f keeps one value at every one of those steps
            (log(1 + exp(s)) is exactly 0 for s < -37, while its gradient is ~1e-17), or moves
            along a straight line whose slope is not the analytic value (within a GELU's stair,
            0.5 x (1 + tanh(z)) with 1 + tanh(z) fixed), it is looked at farther out, up to
            64 * 4^5 steps, and where it departs from that line there by a stair (a jump that
            keeps its height over the second half of a bisection to it, no smooth onset) as high
            as the analytic value predicts across the +-64 steps (and, along one entry, the way it
            predicts), and no higher than f's rounding (16 u max(|f|, 1), or up to 16 u times the
            input's largest entry, which f may cancel -- a stable cross-entropy's (lse + top) - v[target];
            the check's input must be the logits themselves -- where the stair is a few units in the
            last place of a number, m * 2^k with m < 16 (or that over a whole d < 64: a mean over
            rows), as a rounding's is: np.round(x), or
            c * floor(x / 10) at c = 1e-12 beside an entry of 1000, with a straight-through gradient
            still FAILs, though one whose step is such a number, 2^-46, cannot be told from a
            rounding), the probe is UNRESOLVED too.  A smooth f shows
            none of this, so a wrong gradient of one still FAILs.  Each input pays this (up to 55
            calls, 107 where f kept to a line, up to 54 for shorter steps, and up to 42 for far
            shorter ones: 7 steps of 6) only until CONFIRMED_FAILURES (4,
            checker.py) failures are confirmed: the input FAILs then, and its later failing probes,
            not measured again, are counted but never named as wrong entries (some may be right).
  limits    no step can check a gradient across a kink within a step of the point (relu at 0;
            at a clear kink at the point itself, one measured at two steps, an analytic value
            between f's one-sided slopes there, as a subgradient's, is UNRESOLVED, one outside FAILs),
            nor a function that varies on a scale far shorter than the step (cos of x ~ 1e5,
            where the relative step is 10) and than the input's spread (1e5 + noise, with a
            spread of 1, is resolved by the shorter steps), when the shorter steps do not reach
            one where f behaves smoothly: that probe is UNRESOLVED, and the report says f changes
            too much within the step (give a smaller eps).

Which probes (method="auto"): every entry when the input has at most max_entries entries
(None: AUTO_ALL_ENTRIES = 2048 entries, checker.py); otherwise a random sample of max_entries
entries (None: AUTO_SAMPLE = 32) plus `directions` random directions.  method="entries" probes entries only (all of
them when max_entries is None: the old behaviour), method="directional" directions only.  A
direction that fails is halved, and the failing half followed, down to the entry it failed
through, which the report then names (2 log2(n) probes more, not n).

Before any probe: two evaluations at the same point must agree (randomness inside f needs a
fixed seed), and f (or check_op's out) must not come back rounded to float32 or float16.  A
function (fn, or check_op's forward or backward) that changes its arguments in place (inputs,
dout) is refused, naming the argument, with every input restored first: looked for after the
first call, after every probe, and at each move of a probe (what the probe moved, which it puts
back itself and so would hide) -- so a change on any later call is caught too.  Every input is
also restored when f raises mid-check.

The relative error an input reports is norm-wise over its entries, ||a - n|| / max(||a||, ||n||);
for directions |<a,p> - numeric| / ||a * p||.  ``err/bound`` is the worst probe's error over its
bound: a correct gradient sits far below 1, a wrong one above.

A FAIL of an input whose every entry was probed one by one names a pattern in its notes when one
explains the analytic value of every entry from its numeric one, each within its bound (scaled as
the pattern scales the numeric value): analytic = c * numeric (c = 0: zeros, c = -1: a flipped
sign), numeric with its last two axes swapped, or numeric at all but a few entries (named).  None
is guessed: not from a sample, from directions, from a factor only one entry shows, or from a
pattern that differs from numeric itself, beyond the bound, at fewer than two entries (a factor
near 1 absorbing one entry off, the transpose of a symmetric gradient).  A factor is shown to the
digits that explain every entry (1.00001, not 1).

Where each part lives, in the order a check runs through them (in a debugger or to read one:
importlib.import_module("npllama.gradcheck.checker"), or from npllama.gradcheck import checker --
`import npllama.gradcheck.checker as c` fails, npllama.gradcheck being the function):
  api.py         gradcheck and check_op, the ways in; draw_dout, numerical_gradient
  arguments.py   the arguments checked first, each mistake an error that names it
  inplace.py     a function that changes its arguments in place, refused (inputs restored)
  checker.py     which probes, each probe of an entry or a direction, the loop over the inputs
  derivative.py  a probe's numeric derivative and its bound: D(h), Richardson, longer and shorter steps
  remeasure.py   a failing probe measured again: a kink at the point, f's rounding, the steps ladder
  reports.py     the report of each input and of the check: verdict, relative figures, notes
  pattern.py     a FAIL's pattern note (fitted_factor)
  constants.py   the numbers of the error model that several parts use
  norms.py       norms at any scale of float64, rel_error
"""
from .api import check_op, draw_dout, gradcheck, numerical_gradient
from .checker import NondeterministicFunction
from .norms import rel_error
from .pattern import fitted_factor
from .reports import GradcheckReport, InputReport

__all__ = ["gradcheck", "check_op", "numerical_gradient", "draw_dout", "rel_error", "fitted_factor",
           "GradcheckReport", "InputReport", "NondeterministicFunction"]
