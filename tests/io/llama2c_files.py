"""Writers of llama2.c files and run.c's forward pass, written from llama2.c's export.py, run.c and
tokenizer.py independently of npllama/io/llama2c*.py (tests compare the two)."""
import struct

import numpy as np

MAGIC = 0x616B3432


def random_llama2c_weights(dim=16, hidden_dim=24, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40,
                           seq_len=16, shared=True, seed=0):
    """Weights in llama2.c's own names and layouts (PyTorch (out, in), RoPE pairs interleaved)."""
    rng = np.random.default_rng(seed)
    head_size = dim // n_heads
    kv_dim = n_kv_heads * head_size

    def w(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    weights = dict(
        dim=dim, hidden_dim=hidden_dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
        vocab_size=vocab_size, seq_len=seq_len, shared=shared,
        tok=w(vocab_size, dim, scale=1.0),
        att_norm=1 + w(n_layers, dim, scale=0.1), ffn_norm=1 + w(n_layers, dim, scale=0.1),
        wq=w(n_layers, dim, dim), wk=w(n_layers, kv_dim, dim), wv=w(n_layers, kv_dim, dim),
        wo=w(n_layers, dim, dim), w1=w(n_layers, hidden_dim, dim), w2=w(n_layers, dim, hidden_dim),
        w3=w(n_layers, hidden_dim, dim), final_norm=1 + w(dim, scale=0.1))
    weights["cls"] = weights["tok"] if shared else w(vocab_size, dim)
    return weights


def _header_ints(m, signed_vocab):
    return struct.pack("<7i", m["dim"], m["hidden_dim"], m["n_layers"], m["n_heads"], m["n_kv_heads"],
                       signed_vocab, m["seq_len"])


def write_legacy(path, m):
    """export.py legacy_export: 7-int header (negative vocab = unshared), run.c's order."""
    head_size = m["dim"] // m["n_heads"]
    vocab = m["vocab_size"] if m["shared"] else -m["vocab_size"]
    parts = [m["tok"], m["att_norm"], m["wq"], m["wk"], m["wv"], m["wo"], m["ffn_norm"], m["w1"],
             m["w2"], m["w3"], m["final_norm"],
             np.full(m["seq_len"] * head_size // 2, 7.0, np.float32),   # freq_cis_real (unused)
             np.full(m["seq_len"] * head_size // 2, -7.0, np.float32)]  # freq_cis_imag (unused)
    if not m["shared"]:
        parts.append(m["cls"])
    with open(path, "wb") as f:
        f.write(_header_ints(m, vocab))
        for p in parts:
            f.write(np.ascontiguousarray(p, dtype="<f4").tobytes())


def _versioned_header(m, version, group_size=None):
    head = struct.pack("<I", MAGIC) + struct.pack("<i", version) + _header_ints(m, m["vocab_size"])
    head += struct.pack("B", int(m["shared"]))
    if group_size is not None:
        head += struct.pack("<i", group_size)
    return head + b"\0" * (256 - len(head))


def write_v1(path, m):
    """export.py version1_export: 256-byte header, the norms first, then the matrices."""
    parts = [m["att_norm"], m["ffn_norm"], m["final_norm"], m["tok"], m["wq"], m["wk"], m["wv"], m["wo"],
             m["w1"], m["w2"], m["w3"]] + ([] if m["shared"] else [m["cls"]])
    with open(path, "wb") as f:
        f.write(_versioned_header(m, 1))
        for p in parts:
            f.write(np.ascontiguousarray(p, dtype="<f4").tobytes())


def quantize_q80(w, group_size):
    """export.py quantize_q80: symmetric int8 per group; returns (int8, scales, dequantised)."""
    groups = w.reshape(-1, group_size).astype(np.float32)
    scale = (np.abs(groups).max(axis=1) / 127.0).astype(np.float32)
    q = np.round(groups / scale[:, None]).astype(np.int8)
    return q, scale, (q.astype(np.float32) * scale[:, None]).reshape(w.shape)


def write_v2(path, m, group_size=8):
    """export.py version2_export.  Returns the weights as runq.c sees them (dequantised)."""
    deq = dict(m)
    with open(path, "wb") as f:
        f.write(_versioned_header(m, 2, group_size))
        for name in ("att_norm", "ffn_norm", "final_norm"):
            f.write(np.ascontiguousarray(m[name], dtype="<f4").tobytes())
        tensors = [("tok", None)] + [(n, i) for n in ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
                                     for i in range(m["n_layers"])]
        if not m["shared"]:
            tensors.append(("cls", None))
        for name, layer in tensors:
            w = m[name] if layer is None else m[name][layer]
            q, scale, d = quantize_q80(w, group_size)
            f.write(q.tobytes())
            f.write(scale.astype("<f4").tobytes())
            if layer is None:
                deq[name] = d
            else:
                deq[name] = deq[name].copy() if deq[name] is m[name] else deq[name]
                deq[name][layer] = d
    deq["cls"] = deq["tok"] if m["shared"] else deq["cls"]
    return deq


def run_c_forward(m, tokens):
    """run.c's forward(), one token at a time with its KV cache, in float64: logits (T, vocab)."""
    dim, n_heads, n_kv = m["dim"], m["n_heads"], m["n_kv_heads"]
    head_size, kv_mul = dim // n_heads, n_heads // n_kv
    kv_dim = n_kv * head_size
    f64 = {k: np.asarray(v, np.float64) for k, v in m.items() if isinstance(v, np.ndarray)}
    T = len(tokens)
    key_cache = np.zeros((m["n_layers"], T, kv_dim))
    value_cache = np.zeros((m["n_layers"], T, kv_dim))

    def rmsnorm(x, weight):
        return weight * (x / np.sqrt(np.mean(x * x) + 1e-5))

    out = []
    for pos, token in enumerate(tokens):
        x = f64["tok"][token].copy()
        for l in range(m["n_layers"]):
            xb = rmsnorm(x, f64["att_norm"][l])
            q, k, v = f64["wq"][l] @ xb, f64["wk"][l] @ xb, f64["wv"][l] @ xb
            for i in range(0, dim, 2):  # RoPE on adjacent pairs, as run.c does
                freq = 1.0 / 10000.0 ** ((i % head_size) / head_size)
                c, s = np.cos(pos * freq), np.sin(pos * freq)
                for vec in ((q, k) if i < kv_dim else (q,)):
                    v0, v1 = vec[i], vec[i + 1]
                    vec[i], vec[i + 1] = v0 * c - v1 * s, v0 * s + v1 * c
            key_cache[l, pos], value_cache[l, pos] = k, v
            heads = np.zeros(dim)
            for h in range(n_heads):
                qh = q[h * head_size:(h + 1) * head_size]
                kv = slice((h // kv_mul) * head_size, (h // kv_mul + 1) * head_size)
                scores = key_cache[l, :pos + 1, kv] @ qh / np.sqrt(head_size)
                att = np.exp(scores - scores.max())
                att /= att.sum()
                heads[h * head_size:(h + 1) * head_size] = att @ value_cache[l, :pos + 1, kv]
            x = x + f64["wo"][l] @ heads
            xb = rmsnorm(x, f64["ffn_norm"][l])
            h1, h3 = f64["w1"][l] @ xb, f64["w3"][l] @ xb
            x = x + f64["w2"][l] @ (h1 / (1 + np.exp(-h1)) * h3)
        out.append(f64["cls"] @ rmsnorm(x, f64["final_norm"]))
    return np.array(out)


def write_llama2c_tokenizer(path, sp_model_path):
    """tokenizer.py's Tokenizer.export: pieces with '▁' as ' ', BOS/EOS as '\\n<s>\\n' / '\\n</s>\\n'."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model_path))
    tokens, scores = [], []
    for i in range(sp.get_piece_size()):
        t = sp.id_to_piece(i)
        if i == sp.bos_id():
            t = "\n<s>\n"
        elif i == sp.eos_id():
            t = "\n</s>\n"
        tokens.append(t.replace("\u2581", " ").encode("utf-8"))
        scores.append(sp.get_score(i))
    with open(path, "wb") as f:
        f.write(struct.pack("<I", max(len(t) for t in tokens)))
        for b, s in zip(tokens, scores):
            f.write(struct.pack("<fI", s, len(b)))
            f.write(b)
