"""Reading GGUF: a tiny LLaMA written with llama.cpp's `gguf` package as F32, BF16 and Q8_0 loads
with the same logits as the F32 file (within the storage's rounding), other quantizations are
refused by name, and the file's vocabulary becomes the SentencePiece model it came from."""
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from npllama import Llama, LlamaConfig  # noqa: E402
from npllama.cli import main  # noqa: E402
from npllama.io import CheckpointError  # noqa: E402
from npllama.io.gguf_export import _write_metadata, export_gguf, gguf_tensors  # noqa: E402
from npllama.io.gguf_import import convert_gguf, gguf_tokenizer_model_bytes, read_gguf  # noqa: E402
from npllama.tokenizer import Tokenizer  # noqa: E402

VOCAB = 330
TEXT = "Once upon a time, Lily saw a red ball.\nShe said: \"Hi!\" 12 日本"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from npllama.corpus import make_default_corpus

    return Tokenizer.train(make_default_corpus()[:150], tmp_path_factory.mktemp("tok") / "sp", vocab_size=VOCAB)


@pytest.fixture(scope="module")
def folder(tokenizer, tmp_path_factory):
    """Rows of 64 and 96 values: multiples of Q8_0's 32-value blocks, as in real models."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = Llama(config, seed=0, dtype=np.float64)
    for name, array in model.params.items():   # decisive attention: a wrong q/k layout shows in the logits
        array *= 1 if array.ndim == 1 else 8.0
    path = tmp_path_factory.mktemp("model") / "m"
    model.save_pretrained(path, dtype=np.float32, extra_files={"tokenizer.model": tokenizer.model_bytes})
    return path


def _export(folder, path, outtype):
    return export_gguf(folder, path / f"m-{outtype}.gguf", outtype=outtype)


def test_f32_file_loads_as_the_model_it_was_written_from(folder, tokenizer, tmp_path):
    original = Llama.from_pretrained(folder, dtype=np.float64)
    loaded = Llama.from_pretrained(_export(folder, tmp_path, "f32"), dtype=np.float64)
    assert loaded.config == original.config
    for name, value in original.params.items():
        np.testing.assert_array_equal(loaded.params[name], value, err_msg=name)   # both float32 values
    tokens = np.array([tokenizer.encode(TEXT)])
    np.testing.assert_allclose(loaded.forward(tokens), original.forward(tokens), rtol=0, atol=1e-12)


@pytest.mark.parametrize("outtype, qtype", [("bf16", "BF16"), ("q8_0", "Q8_0")])
def test_bf16_and_q8_0_dequantize_as_llama_cpp_does(folder, tokenizer, tmp_path, outtype, qtype):
    """Each matrix is exactly what llama.cpp's own dequantizer makes of the stored values (the gguf
    package's numpy reference; q and k rows move in whole blocks, so their permutation commutes
    with it); norms stay float32.  The logits then differ from the F32 file's by the rounding
    alone: with eps the weights' relative rms rounding error (BF16 ~0.1%, Q8_0 ~0.6%), errors of
    the 9 matrices between a token and its logits (embedding, q, k, v, o, gate, up, down, head)
    add about in quadrature, sqrt(9) * eps of the logits' rms; we allow twice that (measured: 0.7
    of the bound with this fixture's 8x weights, whose sharp attention amplifies errors; 0.3 at
    the init's scale).  A transposed or unpermuted tensor changes the logits by their
    own size."""
    kind = gguf.GGMLQuantizationType[qtype]
    f32 = Llama.from_pretrained(_export(folder, tmp_path, "f32"), dtype=np.float64)
    path = _export(folder, tmp_path, outtype)
    stored = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert stored["blk.0.attn_q.weight"] == stored["token_embd.weight"] == qtype
    assert stored["blk.0.attn_norm.weight"] == "F32"
    loaded = Llama.from_pretrained(path, dtype=np.float64)
    assert loaded.config == f32.config
    for name, value in f32.params.items():
        expected = value if value.ndim == 1 else gguf.quants.dequantize(
            gguf.quants.quantize(value.astype(np.float32), kind), kind)
        np.testing.assert_array_equal(loaded.params[name], expected, err_msg=name)
    matrices = [name for name, value in f32.params.items() if value.ndim == 2]
    rms = lambda x: np.sqrt(np.mean(np.square(x)))  # noqa: E731
    eps = rms(np.concatenate([(loaded.params[n] - f32.params[n]).ravel() for n in matrices])) / rms(
        np.concatenate([f32.params[n].ravel() for n in matrices]))
    tokens = np.array([tokenizer.encode(TEXT)])
    reference = f32.forward(tokens)
    error = rms(loaded.forward(tokens) - reference) / rms(reference)
    assert 0 < error < 2 * np.sqrt(9) * eps


def test_q8_0_export_keeps_rows_that_are_not_whole_blocks_in_f16(tokenizer, tmp_path):
    """As llama.cpp's converter does: Q8_0 needs rows of whole 32-value blocks."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    Llama(config, seed=1).save_pretrained(tmp_path / "m", extra_files={"tokenizer.model": tokenizer.model_bytes})
    path = export_gguf(tmp_path / "m", tmp_path / "m.gguf", outtype="q8_0")
    stored = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert stored["blk.0.ffn_up.weight"] == "Q8_0" and stored["blk.0.ffn_down.weight"] == "F16"
    assert read_gguf(path)[0] == config


def test_a_file_without_output_weight_is_a_model_with_tied_embeddings(tokenizer, tmp_path):
    """llama.cpp's converter leaves output.weight out when the head is the embedding."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                         tie_word_embeddings=True)
    original = Llama(config, seed=2)
    original.save_pretrained(tmp_path / "m", extra_files={"tokenizer.model": tokenizer.model_bytes})
    path = export_gguf(tmp_path / "m", tmp_path / "m.gguf")
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(path).tensors}
    loaded_config, params = read_gguf(path)
    assert loaded_config == config and "lm_head.weight" not in params
    np.testing.assert_array_equal(params["model.embed_tokens.weight"], original.params["model.embed_tokens.weight"])


def _write_with(path, folder, stored_as, extra=None, more_metadata=None):
    """A GGUF of the folder's model whose tensors named in `stored_as` are of another type, and
    with the tensors in `extra` besides; `more_metadata(writer)`, when given, adds fields after
    the model's own."""
    model = Llama.from_pretrained(folder)
    writer = gguf.GGUFWriter(path, "llama")
    _write_metadata(writer, gguf, model.config, "t", "f32")
    if more_metadata is not None:
        more_metadata(writer)
    tensors = {**gguf_tensors(model.config, model.params), **(extra or {})}
    for name, array in tensors.items():
        kind = stored_as.get(name)
        if kind is None:
            writer.add_tensor(name, array)
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_other_quantizations_are_refused_naming_the_tensor_and_the_types_read(folder, tmp_path):
    path = _write_with(tmp_path / "q4.gguf", folder, {"blk.0.ffn_up.weight": gguf.GGMLQuantizationType.Q4_0})
    with pytest.raises(CheckpointError, match=r"tensor 'blk\.0\.ffn_up\.weight': is stored as Q4_0, which "
                                              r"npllama does not read \(it reads F32, F16, BF16, Q8_0\)"):
        Llama.from_pretrained(path)


def test_files_npllama_cannot_build_a_llama_from_are_refused_by_name(folder, tmp_path):
    config = Llama.from_pretrained(folder).config
    other = gguf.GGUFWriter(tmp_path / "gpt2.gguf", "gpt2")
    other.add_block_count(1)
    for step in (other.write_header_to_file, other.write_kv_data_to_file, other.write_tensors_to_file, other.close):
        step()
    with pytest.raises(CheckpointError, match="holds a 'gpt2' model; npllama reads LLaMA"):
        read_gguf(tmp_path / "gpt2.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(CheckpointError, match="is not a readable GGUF file"):
        Llama.from_pretrained(tmp_path / "junk.gguf")
    (tmp_path / "cut.gguf").write_bytes((_export(folder, tmp_path, "f32")).read_bytes()[:-100])
    # was only the gguf package's own words: "cannot reshape array of size 8464 into shape (160,64)"
    with pytest.raises(CheckpointError, match=r"cut\.gguf.*cut short or damaged.*[0-9,]+ bytes"):
        read_gguf(tmp_path / "cut.gguf")
    with pytest.raises(TypeError, match="dtype must be np.float32 or np.float64"):
        read_gguf(tmp_path / "m-f32.gguf", dtype=np.int32)
    assert config.vocab_size == VOCAB


def test_a_file_rotating_part_of_each_head_is_refused(folder, tmp_path):
    """llama.cpp rotates the first llama.rope.dimension_count values of each head; npllama rotates
    whole heads: read as it is, such a file would run with every value rotated."""
    config = Llama.from_pretrained(folder).config

    def half_rotated(writer):
        writer.add_rope_dimension_count(config.head_dim // 2)

    path = _write_with(tmp_path / "partial.gguf", folder, {}, more_metadata=half_rotated)
    with pytest.raises(CheckpointError, match=rf"partial\.gguf.*llama\.rope\.dimension_count.*"
                                              rf"{config.head_dim // 2}.*{config.head_dim}"):
        read_gguf(path)


LLAMA_31 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
OWN_LLAMA3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
              "original_max_position_embeddings": 2048}
# head_dim 64, rope_theta 5e5: two pairs lie in the blend, the fewest that fix its line; with one
# or none (a small model's few pairs) any line through them that scales and keeps the others alike
# gives the same frequencies
TWO_IN_BLEND = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 2.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 2000}
ONE_IN_BLEND = {**TWO_IN_BLEND, "original_max_position_embeddings": 2500}
NONE_IN_BLEND = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 32}   # head_dim 16: pairs of wavelength 6.3, 32.4, 167...


def _llama3_folder(tokenizer, path, scaling, head_dim):
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=64 // head_dim, num_key_value_heads=1, max_position_embeddings=4096,
                         rope_theta=500000.0, rope_scaling=dict(scaling))
    Llama(config, seed=0).save_pretrained(path, extra_files={"tokenizer.model": tokenizer.model_bytes})
    return path


@pytest.mark.parametrize("scaling, head_dim", [(LLAMA_31, 16), (OWN_LLAMA3, 64), (TWO_IN_BLEND, 64),
                                                (ONE_IN_BLEND, 64), (NONE_IN_BLEND, 16)])
def test_llama3_rope_scaling_is_found_again_from_the_per_pair_factors(tokenizer, tmp_path, scaling, head_dim):
    """GGUF keeps LLaMA-3 scaling only as rope_freqs.  Meta's published settings come back as they
    were; other settings come back as ones giving the very same frequencies, however few pairs lie
    in the blend, so the logits agree with the folder's."""
    from npllama.ops.rope import rope_inv_freq

    folder = _llama3_folder(tokenizer, tmp_path / "m", scaling, head_dim)
    original = Llama.from_pretrained(folder, dtype=np.float64)
    loaded = Llama.from_pretrained(_export(folder, tmp_path, "f32"), dtype=np.float64)
    if scaling is LLAMA_31:
        assert loaded.config == original.config
    else:
        assert loaded.config.rope_scaling["factor"] == scaling["factor"]
    np.testing.assert_allclose(rope_inv_freq(head_dim, 500000.0, loaded.config.rope_scaling),
                               rope_inv_freq(head_dim, 500000.0, dict(scaling)), rtol=1e-6)
    tokens = np.array([(tokenizer.encode(TEXT) * 40)[:512]])
    np.testing.assert_allclose(loaded.forward(tokens), original.forward(tokens), rtol=1e-5, atol=1e-6)


# Meta's factors with a small model's own original context: only one of the eight pairs is blended,
# which leaves the blend's line open; it came back as low 0.995, high 3.06, original context 54
SMALL_CONTEXT = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 64}


@pytest.mark.parametrize("scaling", [SMALL_CONTEXT, NONE_IN_BLEND])
def test_meta_like_llama3_settings_come_back_as_they_were(tokenizer, tmp_path, scaling):
    """Meta's low and high factors (1 and 4) with an original context that is a power of two are
    tried before a line is made up: the converted config.json says what the original's did, where
    the factors leave the settings open (head_dim 16: eight pairs)."""
    folder = _llama3_folder(tokenizer, tmp_path / "m", scaling, 16)
    config, _ = read_gguf(_export(folder, tmp_path, "f32"))
    assert config.rope_scaling == scaling


def test_per_pair_factors_no_llama3_settings_give_are_refused(folder, tmp_path):
    head_dim = Llama.from_pretrained(folder).config.head_dim
    factors = (np.linspace(1.0, 3.0, head_dim // 2) ** 2).astype(np.float32)    # not LLaMA-3's blend
    with pytest.raises(CheckpointError, match=r"tensor 'rope_freqs\.weight'.*no LLaMA-3 rope_scaling settings"):
        read_gguf(_write_with(tmp_path / "odd.gguf", folder, {}, extra={"rope_freqs.weight": factors}))


def test_the_vocabulary_becomes_the_sentencepiece_model_it_came_from(folder, tokenizer, tmp_path):
    converted = Tokenizer.from_bytes(gguf_tokenizer_model_bytes(_export(folder, tmp_path, "f32")))
    assert converted.model_info.piece_types == tokenizer.model_info.piece_types
    assert [converted.id_to_piece(i) for i in range(VOCAB)] == [tokenizer.id_to_piece(i) for i in range(VOCAB)]
    for text in (TEXT, "", " two  spaces", "<s>x</s>", "\n"):
        ids = tokenizer.encode(text, eos=True)
        assert converted.encode(text, eos=True) == ids and converted.decode(ids) == tokenizer.decode(ids)


def test_cli_convert_gguf_writes_a_folder_generate_runs(folder, tmp_path, capsys):
    path = _export(folder, tmp_path, "q8_0")
    assert main(["convert", "gguf", str(path), "--out", str(tmp_path / "hf")]) == 0
    assert "with tokenizer.model" in capsys.readouterr().out
    np.testing.assert_array_equal(Llama.from_pretrained(tmp_path / "hf").params["lm_head.weight"],
                                  Llama.from_pretrained(path).params["lm_head.weight"])
    assert main(["generate", "--model", str(tmp_path / "hf"), "--prompt", "Once upon", "--max-new-tokens", "3",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("Once upon")
    assert main(["convert", "gguf", str(folder / "config.json"), "--out", str(tmp_path / "x")]) == 2
    assert "not a GGUF file" in capsys.readouterr().err


def test_convert_gguf_never_replaces_the_folder_holding_the_file(folder, tmp_path, capsys):
    path = _export(folder, tmp_path, "f32")
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["convert", "gguf", str(path), "--out", str(tmp_path), "--force"]) == 2
    assert "--out" in capsys.readouterr().err
    with pytest.raises(ValueError, match="out .* holds"):
        convert_gguf(path, tmp_path)
    assert path.is_file() and (tmp_path / "notes.txt").read_text() == "keep me"


def test_mutated_files_load_or_raise_checkpoint_error(folder, tmp_path, robustness_count):
    """Seeded fuzz over the header, metadata and tensor table: a model or a CheckpointError."""
    import random

    rng = random.Random(0)
    original = _export(folder, tmp_path, "q8_0").read_bytes()
    path, refused = tmp_path / "mutant.gguf", 0
    for _ in range(100):
        data = bytearray(original)
        for _ in range(rng.randint(1, 3)):
            at, size = rng.randrange(4000), rng.choice([1, 4, 8])
            data[at:at + size] = bytes(rng.randrange(256) for _ in range(size))
        if rng.random() < 0.2:
            data = data[:rng.randrange(len(data))]
        path.write_bytes(bytes(data))
        for read in (read_gguf, gguf_tokenizer_model_bytes):
            try:
                read(path)
            except CheckpointError:
                refused += 1
    assert refused > 100
    robustness_count(f"GGUF files: mutated headers and metadata ({refused} of 200 reads refused)", 200)


def test_the_files_bos_and_eos_ids_become_the_models(folder, tmp_path):
    """A GGUF whose tokenizer.ggml.eos_token_id is not SentencePiece's 2 (a chat model ending its
    turns with an added piece): the model's eos_token_id, where generation stops, is the file's --
    it stayed LlamaConfig's default 2, so generation ran past the end and stopped at a plain piece."""
    def bos_3_eos_7(writer):
        writer.add_bos_token_id(3)
        writer.add_eos_token_id(7)

    config, _ = read_gguf(_write_with(tmp_path / "eos.gguf", folder, {}, more_metadata=bos_3_eos_7))
    assert (config.bos_token_id, config.eos_token_id) == (3, 7)
    plain, _ = read_gguf(_write_with(tmp_path / "plain.gguf", folder, {}))
    assert plain.eos_token_id == Llama.from_pretrained(folder).config.eos_token_id


def test_convert_gguf_replaces_its_out_whole(folder, tmp_path):
    """`convert --force` replaces --out whole, as its help says: no file of the model there before
    stays (another model's tokenizer.json would be what AutoTokenizer loads), nor an adapter's."""
    path = _export(folder, tmp_path, "f32")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("tokenizer.json", "adapter_config.json", "notes.txt"):
        (out / name).write_text("{}")
    convert_gguf(path, out)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.model"} <= names
    assert not names & {"adapter_config.json", "notes.txt"}, names
    assert not (out / "tokenizer.json").is_file() or (out / "tokenizer.json").read_text() != "{}"


def test_the_files_end_of_turn_id_is_one_of_the_models_end_ids(folder, tmp_path):
    """llama.cpp stops at tokenizer.ggml.eot_token_id too (LLaMA-3's <|eot_id|>): so does the model."""
    def eos_2_eot(eot):
        def write(writer):
            writer.add_eos_token_id(2)
            writer.add_eot_token_id(eot)
        return write

    config, _ = read_gguf(_write_with(tmp_path / "eot.gguf", folder, {}, more_metadata=eos_2_eot(7)))
    assert config.eos_token_id == [2, 7] and config.end_ids == (2, 7)
    same, _ = read_gguf(_write_with(tmp_path / "same.gguf", folder, {}, more_metadata=eos_2_eot(2)))
    assert same.eos_token_id == 2


def test_an_end_of_turn_id_without_an_eos_id_is_still_the_models_end_id(folder, tmp_path):
    # Before: with no tokenizer.ggml.eos_token_id, the eot id was dropped: the model ended at the
    # default end id alone, where llama.cpp ends at both
    config, _ = read_gguf(_write_with(tmp_path / "eot.gguf", folder, {},
                                      more_metadata=lambda writer: writer.add_eot_token_id(7)))
    assert config.eos_token_id == [2, 7] and config.end_ids == (2, 7)


@pytest.mark.parametrize("eot, eom, end_ids", [(None, 9, (2, 9)), (7, 9, (2, 7, 9)), (7, 7, (2, 7)), (None, 2, (2,)),
                                               (9, None, (2, 9))])
def test_the_files_end_of_message_id_is_one_of_the_models_end_ids(folder, tmp_path, eot, eom, end_ids):
    """llama.cpp stops at tokenizer.ggml.eom_token_id too (LLaMA-3.1's <|eom_id|>, which ends a
    message to a tool): so does the model, beside the end of text and the end of turn."""
    def write(writer):
        writer.add_eos_token_id(2)
        for add, token_id in ((writer.add_eot_token_id, eot), (writer.add_eom_token_id, eom)):
            if token_id is not None:
                add(token_id)

    config, _ = read_gguf(_write_with(tmp_path / "eom.gguf", folder, {}, more_metadata=write))
    assert config.end_ids == end_ids


@pytest.mark.parametrize("key", ["eot_token_id", "eom_token_id"])
def test_an_end_id_past_the_vocabulary_is_left_out_with_a_warning_naming_its_field(folder, tmp_path, key):
    """llama.cpp loads a file whose end of turn or of message is no id of its vocabulary (it warns
    and ignores that id): so does npllama, naming the field, rather than refusing the whole file
    as one whose eos_token_id is wrong."""
    def write(writer):
        writer.add_eos_token_id(2)
        getattr(writer, f"add_{key}")(VOCAB + 5)

    path = _write_with(tmp_path / "bad_end.gguf", folder, {}, more_metadata=write)
    with pytest.warns(UserWarning, match=rf"tokenizer\.ggml\.{key} is {VOCAB + 5}, no id of the vocabulary "
                                         rf"\(0 to {VOCAB - 1}\): not one of the model's end ids"):
        config, _ = read_gguf(path)
    assert config.end_ids == (2,)


def test_the_files_chat_template_comes_back_with_the_converted_folder(folder, tokenizer, tmp_path):
    """export gguf writes the folder's chat template (tokenizer.chat_template, what llama.cpp's chat
    mode renders with); convert gguf dropped it, so `generate --chat` on the converted folder fell
    back to the built-in llama2 template and prompted the model with another format."""
    import shutil

    from npllama.chat import read_folder_template

    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}"
    with_template = tmp_path / "chat"
    shutil.copytree(folder, with_template)
    for name, data in tokenizer.hf_files(chat_template=template).items():
        (with_template / name).write_bytes(data)
    out, _ = convert_gguf(_export(with_template, tmp_path, "f32"), tmp_path / "back")
    assert read_folder_template(out) == template
    without, _ = convert_gguf(_export(folder, tmp_path, "q8_0"), tmp_path / "plain")
    assert read_folder_template(without) is None


def test_a_chat_template_that_is_not_jinja_is_kept_with_a_warning_naming_it(folder, tokenizer, tmp_path, capsys):
    """convert gguf keeps the file's tokenizer.chat_template as it is; one that does not compile
    (an unknown filter) was kept without a word, and `generate --chat` stopped on it later: the
    conversion says so in one line, naming the field and the way past it (--chat-template)."""
    import shutil
    import warnings

    from npllama.chat import read_folder_template

    for template, warned in [("{% for m in messages %}{{ m['content'] | nosuchfilter }}{% endfor %}", True),
                             ("{% for m in messages %}{{ m['content'] }}{% endfor %}", False)]:
        with_template = tmp_path / f"chat-{warned}"
        shutil.copytree(folder, with_template)
        for name, data in tokenizer.hf_files(chat_template=template).items():
            (with_template / name).write_bytes(data)
        with warnings.catch_warnings(record=True) as exported_with:   # (export gguf warns of it too)
            warnings.simplefilter("always")
            exported = export_gguf(with_template, tmp_path / f"{warned}.gguf")
        assert len(exported_with) == warned, [str(w.message) for w in exported_with]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out, _ = convert_gguf(exported, tmp_path / f"back-{warned}")
        said = [str(w.message) for w in caught]
        assert read_folder_template(out) == template      # kept as the file has it, either way
        if not warned:
            assert said == []
            continue
        assert len(said) == 1 and "tokenizer.chat_template is not valid Jinja" in said[0], said
        assert "nosuchfilter" in said[0] and "--chat-template" in said[0] and str(exported) in said[0], said
        assert "kept in tokenizer_config.json" in said[0], said   # the file the converted folder holds it in
        with pytest.warns(UserWarning) as record:   # the command prints each warning in one line
            assert main(["convert", "gguf", str(exported), "--out", str(tmp_path / "cli")]) == 0
        assert [str(w.message) for w in record] == said


def test_a_chat_template_is_kept_when_the_files_vocabulary_is_not_sentencepiece(folder, tmp_path):
    """A LLaMA-3 GGUF's vocabulary is a gpt2 (BPE) one, which npllama writes no tokenizer for; its
    chat template was lost with it.  It is kept as chat_template.jinja, where chat and transformers
    find it once the user copies the model's tokenizer in."""
    from npllama.chat import folder_template_and_file

    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"

    def bpe_with_template(writer):
        writer.add_tokenizer_model("gpt2")
        writer.add_chat_template(template)

    out, has_tokenizer = convert_gguf(_write_with(tmp_path / "bpe.gguf", folder, {}, more_metadata=bpe_with_template),
                                      tmp_path / "out")
    assert not has_tokenizer and not (out / "tokenizer.model").exists()
    assert folder_template_and_file(out) == (template, out / "chat_template.jinja")

    def bpe_with_a_broken_template(writer):   # warned of, naming the file it is kept in (not tokenizer_config.json)
        writer.add_tokenizer_model("gpt2")
        writer.add_chat_template("{{ messages | nosuchfilter }}")

    with pytest.warns(UserWarning, match=r"tokenizer.chat_template is not valid Jinja.*kept in chat_template\.jinja"):
        convert_gguf(_write_with(tmp_path / "broken.gguf", folder, {}, more_metadata=bpe_with_a_broken_template),
                     tmp_path / "broken")
