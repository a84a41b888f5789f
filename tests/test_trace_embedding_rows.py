"""A divergence of the embedding's gradient confined to the rows of the tokens the input repeats is
the mark of a scatter-add that keeps one of the repeated updates (dweight[ids] += dx): the report
says so, when -- and only when -- those rows are exactly the repeated tokens."""
import numpy as np
import pytest

from npllama import Llama, LlamaConfig, debug, use_op
from npllama.trace import compare

CONFIG = LlamaConfig(vocab_size=29, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                     tie_word_embeddings=False)
HINT = "the rows of tokens that occur more than once in the input: a scatter-add that keeps one of the repeated updates?"


def embedding_backward_assigning(dout, cache):
    tokens, weight_shape, dtype = cache
    dweight = np.zeros(weight_shape, dtype=dtype)
    dweight[tokens.reshape(-1)] += dout.reshape(-1, weight_shape[1])   # one of each repeated id's updates
    return dweight


def planted_report(ids, tied=False):
    config = LlamaConfig(**{**CONFIG.__dict__, "tie_word_embeddings": tied}) if tied else CONFIG
    with use_op("embedding_backward", embedding_backward_assigning, backend="numpy"):
        return debug.compare_backends(Llama(config, seed=0), ids)


@pytest.mark.parametrize("tied", [False, True])
def test_the_rows_of_the_repeated_tokens_are_named_as_such(tied):
    report = planted_report([1, 7, 3, 7, 5, 9, 2, 9, 9], tied)
    d = report["d:model.embed_tokens.weight"]
    assert d.diverged and "only at indices [7, 9] of axis 0" in d.note, str(report)
    assert HINT in d.note and HINT in str(report)


def test_no_such_hint_when_the_rows_are_not_the_repeated_tokens():
    embedding = np.zeros((29, 16))
    other = embedding.copy()
    other[3] = 1.0                     # token 3 occurs once; 7 twice
    a = {"d:model.embed_tokens.weight": embedding}
    b = {"d:model.embed_tokens.weight": other}
    from npllama.trace import Trace

    ta, tb = Trace(meta={"tokens": [[1, 7, 3, 7]]}), Trace(meta={"tokens": [[1, 7, 3, 7]]})
    ta.records, tb.records = dict(a), dict(b)
    d = compare(ta, tb)["d:model.embed_tokens.weight"]
    assert d.diverged and "only at indices [3] of axis 0" in d.note and "more than once" not in d.note
    other[7] = 1.0                     # 3 and 7: more than the repeated tokens
    tb.records = {"d:model.embed_tokens.weight": other}
    assert "more than once" not in compare(ta, tb)["d:model.embed_tokens.weight"].note
    only_repeated = embedding.copy()
    only_repeated[7] = 1.0
    tb.records = {"d:model.embed_tokens.weight": only_repeated}
    assert HINT in compare(ta, tb)["d:model.embed_tokens.weight"].note
    ta.meta["tokens"] = tb.meta["tokens"] = [[1, 7, 3, 7, 9, 9]]   # 7 and 9 repeated, only 7's row differs
    assert "more than once" not in compare(ta, tb)["d:model.embed_tokens.weight"].note
    ta.meta.pop("tokens"), tb.meta.pop("tokens")   # no tokens known: nothing to say
    assert "more than once" not in compare(ta, tb)["d:model.embed_tokens.weight"].note


def test_no_repeated_token_no_divergence():
    # the slip is invisible without a repeated token: why the docs say to pick an input with one
    assert planted_report([1, 7, 3, 5, 2]).ok
