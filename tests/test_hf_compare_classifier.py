"""debug.compare_transformers on a classifier: npllama's SequenceClassifier against transformers'
LlamaForSequenceClassification, record for record (the head's too)."""
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from npllama import debug, use_op  # noqa: E402
from npllama.lora import attach_lora  # noqa: E402

from .test_debug_objectives import classifier_backward_dhidden_doubled  # noqa: E402
from .test_trace_objectives import LABELS, MASK, TOKENS, classifier  # noqa: E402


def padded_classifier():
    c = classifier()
    c.pad_id = 0    # TOKENS' second row is padded with 0, which transformers finds by config.pad_token_id
    return c


def test_a_classifier_agrees_with_transformers_record_for_record():
    report = debug.compare_transformers(padded_classifier(), TOKENS, LABELS, attention_mask=MASK, dtype=np.float64)
    assert report.ok, str(report)
    assert not report.only_in_a and not report.only_in_b
    for name in ("score.pooled_index", "score.out", "loss", "d:score.out", "d:model.norm.out", "d:score.weight"):
        assert report[name].size


def test_a_bug_in_the_heads_backward_is_found_against_transformers():
    with use_op("classifier_backward", classifier_backward_dhidden_doubled):
        report = debug.compare_transformers(padded_classifier(), TOKENS, LABELS, attention_mask=MASK,
                                            dtype=np.float64)
    assert report.first.name == "d:model.norm.out"


def test_a_different_pooled_position_is_the_first_divergence():
    # no pad id: npllama pools the mask's last real token, transformers the last position
    report = debug.compare_transformers(classifier(), TOKENS[1:], LABELS[:1], attention_mask=MASK[1:],
                                        dtype=np.float64)
    assert report.first.name == "score.pooled_index"


def test_a_classifier_without_pad_id_runs_one_row_only():
    with pytest.raises(ValueError, match="no pad id"):
        debug.compare_transformers(classifier(), TOKENS, LABELS, attention_mask=MASK)


def test_a_lora_classifier_is_refused():
    c = padded_classifier()
    attach_lora(c.model, r=2)
    with pytest.raises(ValueError, match="merge"):
        debug.compare_transformers(c, TOKENS, LABELS, attention_mask=MASK)
