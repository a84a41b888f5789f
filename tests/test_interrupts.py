"""npllama/interrupts.py: stop signals held while a block runs and delivered after it; SIGTERM and
SIGHUP raise like Ctrl-C where asked; a signal the process ignores stays ignored."""
import os
import signal

import pytest

from npllama.interrupts import Interrupted, deferred_stop_signals, stop_signals_interrupt


def test_a_signal_inside_a_deferred_block_arrives_when_the_outermost_block_ends():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_stop_signals():
            with deferred_stop_signals():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("inner")
            done.append("outer")  # still inside the outer block: held
    assert done == ["inner", "outer"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_a_held_signal_is_delivered_even_when_the_block_raised():
    with pytest.raises(KeyboardInterrupt):
        with deferred_stop_signals():
            os.kill(os.getpid(), signal.SIGINT)
            raise ValueError("the block's own error")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_raise_interrupted_like_ctrl_c(signum):
    before = signal.getsignal(signum)
    with pytest.raises(KeyboardInterrupt) as info:
        with stop_signals_interrupt():
            os.kill(os.getpid(), signum)  # the handler runs as soon as kill returns
    assert isinstance(info.value, Interrupted) and info.value.signum == signum
    assert signal.getsignal(signum) == before


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with stop_signals_interrupt(), deferred_stop_signals():
            os.kill(os.getpid(), signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
