"""The data pipeline for pre-training (article §3.2.1, data preprocessing): text -> token ids -> batches.

    texts = load_texts("corpus.txt")                       # list[str], one per document
    texts = Corpus("corpus.txt")                           # the same documents, streamed from disk
    ids = tokenize_corpus(texts, tok, cache_path="cache/tokens.npy")   # 1-D array of token ids
    train_ids, val_ids = train_val_split(ids, 0.05, bos_id=tok.bos_id)
    loader = BatchLoader(train_ids, batch_size=32, seq_len=128, seed=0)
    tokens, targets = loader.next_batch()                  # int64 (32, 128) each
    val_batches = evaluation_batches(val_ids, 32, 128, max_batches=20)

The token stream.  Every document becomes `<s> doc </s>` and the documents are concatenated:

    <s> Once upon a time ... </s> <s> There was once ... </s> <s> ...

so the model sees where stories start (BOS) and learns to end them (EOS).  Training windows are cut
from this stream regardless of document boundaries, as in LLaMA's pre-training: a window may hold
the end of one story and the start of the next; the BOS token tells the model that what follows
does not depend on what came before.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .io.atomic import _TMP_TAG, _fresh_name, _fsync_dir, atomic_write_text
from .io.reading import parse_json
from .ops._checks import require_path

TOKEN_CACHE_FORMAT = 1  # part of the cache key: bump it when the stream layout changes
ENCODE_CHUNK = 1024     # documents per encode_batch call (one progress-bar step) at most,
ENCODE_CHUNK_CHARS = 1_000_000   # and characters: a corpus of a few long books advances the bar too
SCAN_BLOCK = 1 << 20    # tokens compared at a time in a scan of the stream (a document start, <unk>)
READ_BLOCK = 1 << 20    # bytes of a corpus file read at a time (whole lines: a longer line is read whole)


# ----- reading text --------------------------------------------------------------------------------

DOC_SEPARATORS = ("blank-line", "line", "marker:<TEXT>", "whole-file")  # what a .txt file is cut at


def load_texts(path, doc_separator: str = "blank-line") -> list[str]:
    """Read a corpus as a list of documents.

    * `.txt`: UTF-8 text, cut into documents as `doc_separator` says:
        - "blank-line" (default): at one or more blank lines (lines holding only whitespace count
          as blank).  A file with one story per paragraph gives one document per story.
        - "line": at every newline: each non-blank line is a document (text written one paragraph
          per line, as Chinese text often is, which has no blank line to cut at).
        - "marker:<TEXT>": at every occurrence of TEXT (e.g. "marker:<|endoftext|>"); blank lines
          stay inside a document, so a play or a book with paragraphs stays whole.
        - "whole-file": the file is one document.
      A document keeps its newlines (\\r\\n and \\r read as \\n); surrounding whitespace is stripped.
      A UTF-8 byte-order mark at the start of a file is dropped (.jsonl too).
    * `.jsonl`: one JSON object per line with a string field "text" (blank lines are skipped).
    * a folder: every `.txt` and `.jsonl` file in it and its subfolders, in sorted path order, each
      read by the rules above (see corpus_files: hidden ones are left out, and what is left out is
      said in a warning).

    Empty documents are dropped.  Raises FileNotFoundError if `path` does not exist, ValueError for
    other formats, a bad doc_separator, malformed JSON (naming the file and line) or a corpus
    without any text.
    """
    return list(Corpus(path, doc_separator, progress=False))


class Corpus:
    """The documents of a corpus on disk (the rules of `load_texts`), read as a stream: iterating
    reads the files again, a block of lines at a time, so only the document being read is in
    memory, whatever the size of the corpus.

        corpus = Corpus("stories.txt")      # reads it all once: what cannot be read is refused here
        len(corpus), corpus.n_chars         # its documents and characters
        for text in corpus: ...             # the documents, in load_texts' order

    The first reading checks the whole corpus (what load_texts refuses is refused here, with the
    same message), counts it, and hashes it (`digest`, which tokenize_corpus' cache key holds).
    progress: a tqdm bar, in bytes, while reading; None shows it for corpora over ten million bytes.
    """

    def __init__(self, path, doc_separator: str = "blank-line", progress: bool | None = None):
        check_doc_separator(doc_separator)
        path = Path(require_path("path", path, "a .txt or .jsonl file or a folder of them")).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"corpus {str(path)!r} does not exist (expected a .txt or .jsonl file, "
                                    f"or a folder of them)")
        self.path, self.doc_separator, self.progress = path, doc_separator, progress
        self.files = corpus_files(path) if path.is_dir() else [path]
        self._stamps = self._file_stamps()   # before the first reading: an edit during it is noticed too
        self._bar_text = None                # later passes: shown only as `shown` labels them
        # the first reading warns about the text (a marker that never occurs); later ones need not
        self.digest, self.n_documents, self.n_chars = _text_digest(self._documents("reading", warn=True))
        if not self.n_documents:
            raise ValueError(f"corpus {str(path)!r} is empty: it contains no text")

    def __len__(self) -> int:
        return self.n_documents

    def __iter__(self):
        return self._documents(self._bar_text, warn=False)

    def _documents(self, bar_text: str | None, warn: bool):
        from tqdm.auto import tqdm

        total = sum(file.stat().st_size for file in self.files)
        show = total > 10 * ENCODE_CHUNK_CHARS if self.progress is None else self.progress
        # delay: a pass that takes under a second shows nothing, and the line a reader of this pass
        # prints once it has a first document (Tokenizer.train's) comes before the bar, not inside it
        with tqdm(total=total, desc=bar_text, unit="B", unit_scale=True, delay=1,
                  disable=not (show and bar_text)) as bar:
            for file in self.files:
                yield from _read_file(file, self.doc_separator, warn, bar.update)

    def check_unchanged(self) -> None:
        """A ValueError if a file changed since the first reading: the passes over it (tokenizer,
        tokens) would not be of the text the digest, and so the cache key, describes."""
        for file, before, now in zip(self.files, self._stamps, self._file_stamps()):
            if before != now:
                raise ValueError(f"corpus file {str(file)!r} changed while it was being read (its size or "
                                 f"modification time, or it was removed); run again once it is written")

    def _file_stamps(self) -> list[tuple[int, int] | None]:
        return [(stat.st_size, stat.st_mtime_ns) if stat else None for stat in map(_stat_or_none, self.files)]

    def shown(self, bar_text: str) -> "Corpus":
        """The same corpus, its next reading shown as a bar labelled bar_text (a pass over it)."""
        import copy

        shown = copy.copy(self)
        shown._bar_text = bar_text
        return shown

    def __repr__(self) -> str:
        return (f"Corpus({str(self.path)!r}, {self.doc_separator!r}): {self.n_documents:,} documents, "
                f"{self.n_chars:,} characters")


CORPUS_SUFFIXES = (".txt", ".jsonl")   # in any case: Windows names files NOTES.TXT


def corpus_files(folder: Path) -> list[Path]:
    """The `.txt` and `.jsonl` files in folder and its subfolders, in sorted path order.

    Symbolic links are followed (a folder reached twice is read once).  Hidden files and folders
    (".git", Jupyter's ".ipynb_checkpoints" copies of a corpus) are left out; they, and files of
    other kinds (.md, .csv, .json), are named in one UserWarning, so that no text is left out
    unsaid.  A link to nothing, an unreadable subfolder or a folder with no file to read (what it
    left out named) is an error naming it.
    """
    import warnings

    def refuse(error: OSError):
        raise error

    files, other, hidden, seen = [], [], [], set()
    for root, dirs, names in os.walk(folder, onerror=refuse, followlinks=True):
        if os.path.realpath(root) in seen:   # a link back to a folder already read (or to itself)
            dirs[:] = []
            continue
        seen.add(os.path.realpath(root))
        hidden += [Path(root, d) for d in dirs if d.startswith(".")]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            file = Path(root, name)
            if name.startswith("."):
                hidden.append(file)
            elif file.suffix.lower() not in CORPUS_SUFFIXES:
                other.append(file)
            elif not file.exists():
                raise ValueError(f"corpus file {str(file)!r} is a symbolic link to {os.readlink(file)!r}, "
                                 f"which does not exist")
            else:
                files.append(file)
    unread = [f"what {what} ({', '.join(str(f.relative_to(folder)) for f in sorted(group)[:3])}"
              f"{f' and {len(group) - 3} more' if len(group) > 3 else ''})"
              for group, what in ((other, "is not .txt or .jsonl"), (hidden, "is hidden")) if group]
    left_out = f"left out {' and '.join(unread)}" if unread else ""
    if not files:   # a folder of hidden .txt files holds text: say that it was left out
        raise ValueError(f"corpus folder {str(folder)!r} contains no .txt or .jsonl files to read"
                         f"{f' ({left_out})' if left_out else ''}")
    if left_out:
        warnings.warn(f"corpus folder {str(folder)!r}: {left_out}", UserWarning, stacklevel=3)
    return sorted(files)


def check_doc_separator(doc_separator) -> None:
    """A ValueError unless doc_separator is one of DOC_SEPARATORS (a marker with non-empty text)."""
    if not isinstance(doc_separator, str):
        raise TypeError(f"doc_separator must be a str (one of {', '.join(DOC_SEPARATORS)}), got {doc_separator!r}")
    if doc_separator in ("blank-line", "line", "whole-file"):
        return
    if not doc_separator.startswith("marker:") or not doc_separator[len("marker:"):].strip():
        raise ValueError(f"doc_separator must be blank-line, line, whole-file or marker:<TEXT> with a non-blank "
                         f"TEXT (e.g. marker:<|endoftext|>), got {doc_separator!r}")


def _read_file(path: Path, doc_separator: str, warn: bool = True, read=None):
    """The documents of one file, read a block of lines at a time (`read` is told the bytes read)."""
    from .budget import max_read
    from .io.reading import read_text_blocks

    if path.suffix.lower() == ".txt":
        blocks = read_text_blocks(path, max_bytes=max_read(), block_bytes=READ_BLOCK, read=read)
        yield from _split_blocks(blocks, doc_separator, path if warn else None)
    elif path.suffix.lower() == ".jsonl":
        yield from (record["text"] for _, record in _numbered_jsonl(path, {"text": str}, read)
                    if record["text"].strip())
    else:
        raise ValueError(f"cannot read corpus file {str(path)!r}: expected a .txt or .jsonl file "
                         f"(or a folder of them), got {path.suffix or 'no extension'!r}"
                         f"{JSON_LINES_ADVICE if path.suffix.lower() == '.json' else ''}")


def split_documents(text: str, doc_separator: str = "blank-line", warn_about=None) -> list[str]:
    """Split text into documents (the `.txt` rule of `load_texts`).  Windows (\\r\\n) and old Mac
    (\\r) line ends become \\n first, as Python's text mode reads them, whatever the separator.
    warn_about: the text's name (its file), to warn, as reading --data does, if it has text but
    never the marker."""
    check_doc_separator(doc_separator)
    return list(_split_blocks([text], doc_separator, warn_about))


def unix_line_ends(text: str) -> str:
    """Windows (\r\n) and old Mac (\r) line ends as \n, as Python's text mode reads them (a block
    of lines must end at a line end, so that no \r\n is cut in two)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _split_blocks(blocks, doc_separator: str, warn_about=None):
    """split_documents of the text that `blocks` make (each ending at a line end), one document at a
    time.  warn_about: the file, to warn if it has text but never the marker."""
    blocks = map(unix_line_ends, blocks)
    if doc_separator == "blank-line":
        yield from _split_at_blank_lines(blocks)
        return
    separator = {"whole-file": None, "line": "\n"}.get(doc_separator, doc_separator[len("marker:"):])
    # a marker may begin in the text before a block: in its last len(marker) - 1 characters, which
    # may span several blocks shorter than the marker (a marker of many lines)
    keep = len(separator) - 1 if separator else 0
    pending, tail, cut = [], "", False       # the text since the last separator, as blocks; its end
    for block in blocks:
        if separator is None or separator not in tail + block:
            pending.append(block)
            tail = (tail + block[-keep:])[-keep:] if keep else ""
            continue
        *pieces, rest = ("".join(pending) + block).split(separator)
        yield from (piece.strip() for piece in pieces if piece.strip())
        pending, tail, cut = [rest], rest[-keep:] if keep else "", True
    last = "".join(pending).strip()
    if last:
        yield last
    if warn_about is not None and doc_separator.startswith("marker:") and last and not cut:
        import warnings

        warnings.warn(f"the document separator {doc_separator!r} (--doc-separator) never occurs in "
                      f"{str(warn_about)!r}: the whole file is one document", UserWarning, stacklevel=2)


def _split_at_blank_lines(blocks):
    current = []
    for line in _lines(blocks):
        if line.strip():
            current.append(line)
        elif current:
            yield "\n".join(current).strip()
            current = []
    if current:
        yield "\n".join(current).strip()


def _lines(blocks):
    """The lines of the text `blocks` make, cut at \n only -- not splitlines(): U+2028, U+0085 and
    form feeds stay the text's own (and a JSON string may hold them unescaped)."""
    rest = ""
    for block in blocks:
        *lines, rest = (rest + block).split("\n")
        yield from lines
    yield rest


def _stat_or_none(path: Path):
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def _text_digest(documents) -> tuple[str, int, int]:
    """(sha256 of the documents, how many, their characters): the documents' part of the cache key."""
    h, n_documents, n_chars = hashlib.sha256(), 0, 0
    for text in documents:
        data = text.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))  # length-prefixed: ["ab", "c"] != ["a", "bc"]
        h.update(data)
        n_documents, n_chars = n_documents + 1, n_chars + len(text)
    return h.hexdigest(), n_documents, n_chars


def token_digest(ids) -> str:
    """sha256 of a token stream's ids: what a checkpoint keeps to tell whether a resume reads the
    tokens it was trained on.  The values count, not the stream's storage type (uint16, int32,
    int64): each block is hashed as little-endian uint16 when its ids fit (a vocabulary under 65536,
    the usual case: a quarter of the bytes to hash that int64 would be), else as int64, after a byte
    saying which."""
    h = hashlib.sha256()
    for start in range(0, ids.shape[0], SCAN_BLOCK):   # a memory-mapped stream is read a block at a time
        block = np.asarray(ids[start:start + SCAN_BLOCK])
        narrow = int(block.min()) >= 0 and int(block.max()) <= np.iinfo(np.uint16).max   # (no block is empty)
        h.update(b"\x02" if narrow else b"\x08")
        h.update(np.ascontiguousarray(block, dtype="<u2" if narrow else "<i8").tobytes())
    return h.hexdigest()


# what a user holding a .json file of records (a JSON array) is to do
JSON_LINES_ADVICE = "; a JSON array of objects becomes JSON Lines with jq -c '.[]' FILE.json > FILE.jsonl"


def read_jsonl(path, fields: dict) -> list[dict]:
    """The JSON objects of a .jsonl file (blank lines skipped), each checked to hold `fields`
    (name -> type or tuple of types).  Errors name the file and the line."""
    return [record for _, record in read_numbered_jsonl(path, fields)]


def read_numbered_jsonl(path, fields: dict) -> list[tuple[int, dict]]:
    """read_jsonl's objects with the line each is on, for errors found after reading."""
    return list(_numbered_jsonl(path, fields))


def _numbered_jsonl(path, fields: dict, read=None):
    from .budget import max_read
    from .io.reading import read_text_blocks

    path = Path(path)
    blocks = read_text_blocks(path, max_bytes=max_read(), block_bytes=READ_BLOCK, read=read)
    # (a \r before the \n is JSON white space)
    for line_number, line in enumerate(_lines(blocks), start=1):
        if line.strip():
            yield line_number, _checked_record(line, f"{str(path)!r} line {line_number}", fields)


def _checked_record(line: str, where: str, fields: dict) -> dict:
    if line.strip() in ("[", "{"):
        raise ValueError(f"{where}: {line.strip()!r} alone on a line starts JSON written over many lines, but a "
                         f".jsonl file holds one JSON object per line{JSON_LINES_ADVICE}")
    record = parse_json(line, where)  # bad syntax or nesting too deep: a ValueError naming the line
    for field, kind in fields.items():
        if not isinstance(record, dict) or field not in record:
            found = (f", got a JSON array{JSON_LINES_ADVICE}" if isinstance(record, list) else
                     f"; {fields_found(record, *fields)}" if isinstance(record, dict) else
                     f", got a JSON {json_type_name(record)}")
            raise ValueError(f'{where}: expected a JSON object with a "{field}" field{found}')
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(record[field], kinds) or isinstance(record[field], bool):
            raise ValueError(f'{where}: "{field}" must be a {" or ".join(k.__name__ for k in kinds)}, '
                             f'got {json_type_name(record[field])}')
    return record


def fields_found(record: dict, *wanted: str) -> str:
    """What a JSON object lacking one of the fields `wanted` has instead, for the error that names the
    line: another layout's names, or wanted fields in other case ("Text", as a CSV header may spell
    it) -- each of those named with its spelling, so one run finds them all."""
    if not record:
        return "this line has no fields"
    shown = lambda name: json.dumps(name, ensure_ascii=False)
    found = f"this line has the fields {', '.join(map(shown, record))}"
    miscased = [f"{shown(name)} for {shown(k)}" for k in record for name in wanted
                if k != name and name not in record and k.strip().casefold() == name]
    if miscased:
        found += f" (JSON field names are case-sensitive: write {', '.join(miscased)})"
    return found


def json_type_name(value) -> str:
    """A parsed JSON value's type as the file spells it where Python's name would puzzle
    ("null", not "NoneType"; "true/false", not "bool"); else Python's (int, float, list, dict)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return type(value).__name__


# ----- tokenizing ----------------------------------------------------------------------------------

def tokenize_corpus(texts, tokenizer, cache_path=None, progress: bool | None = None) -> np.ndarray:
    """The whole corpus as one 1-D stream of token ids: `<s> doc </s>` for every document.

    texts: a list of str, or a Corpus (read from disk as it is tokenized).
    dtype is uint16 when every id fits (vocab_size <= 65536, so half the memory of int32),
    else int32.  With `cache_path` (a `.npy` file) the stream is written there as it is made,
    with a key -- a hash of the texts, the tokenizer model and the stream format -- in
    `<cache_path>.json`, and returned memory-mapped (read-only): a corpus of any size is tokenized
    in the memory of one chunk of documents.  A later call with the same key loads it instead of
    tokenizing again; a call with different texts or another tokenizer re-tokenizes and
    overwrites it.

    progress: show a tqdm bar (in characters); None shows it for corpora of more than ten million
    characters (about ten seconds' work, whether in many short documents or a few long ones).
    """
    _require_tokenizable(texts, tokenizer)
    if cache_path is None:
        return np.concatenate(list(_encode_stream(texts, tokenizer, progress)))
    cache_path = _checked_cache_path(cache_path)
    cached = _load_cached(cache_path, _cache_key(texts, tokenizer))
    if cached is not None:
        return cached
    made = tokenize_pending(texts, tokenizer, cache_path, progress)
    made.keep()
    return made.ids


class PendingTokens:
    """A token stream made from its texts (tokenize_pending): `ids`, memory-mapped from a temporary
    file beside its cache (or in memory, when that could not be written).  keep() puts it in the
    cache's place; drop() removes it, the cache and its key left as they were."""

    def __init__(self, ids: np.ndarray, cache_path: Path, key: str, tmp: Path | None):
        self.ids, self._cache_path, self._key, self._tmp = ids, cache_path, key, tmp

    def keep(self) -> None:
        """Put the stream in its cache's place (the old key removed first, the new one written after);
        nothing when it is held in memory (its file could not be written)."""
        if self._tmp is None:
            return
        meta_path = Path(f"{self._cache_path}.json")
        # the old key first: no key vouches for the new array before it is the one its key names
        meta_path.unlink(missing_ok=True)
        os.replace(self._tmp, self._cache_path)
        self._tmp = None
        _fsync_dir(self._cache_path.parent)
        atomic_write_text(meta_path, json.dumps({"key": self._key, "n_tokens": int(self.ids.shape[0]),
                                                 "dtype": str(self.ids.dtype)}))

    def drop(self) -> None:
        """Remove the temporary file, leaving the cache and its key as they were."""
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


def tokenize_pending(texts, tokenizer, cache_path, progress: bool | None = None) -> PendingTokens:
    """The stream tokenize_corpus(texts, tokenizer, cache_path) makes from the texts, its cache not
    read, written beside the cache but not yet in its place (PendingTokens): for a caller that
    takes the stream only if it checks out (a resume: the checkpoint's tokens), and otherwise leaves
    the folder as it was.  A file that cannot be written (a full disk, a read-only folder): a
    warning, and the stream in memory, kept nowhere."""
    _require_tokenizable(texts, tokenizer)
    cache_path = _checked_cache_path(cache_path)
    key = _cache_key(texts, tokenizer)
    try:
        ids, tmp = _write_stream(cache_path, _encode_stream(texts, tokenizer, progress))
    except OSError as error:
        import warnings

        if isinstance(texts, Corpus):   # a corpus file removed since the first reading: that, not the cache
            texts.check_unchanged()
        warnings.warn(f"could not write the token cache {cache_path} ({error}); going on without it, "
                      f"the tokens in memory", RuntimeWarning, stacklevel=2)
        return PendingTokens(np.concatenate(list(_encode_stream(texts, tokenizer, progress))), cache_path, key, None)
    return PendingTokens(ids, cache_path, key, tmp)


def cached_tokens(texts, tokenizer, cache_path) -> np.ndarray | None:
    """The stream tokenize_corpus(texts, tokenizer, cache_path) would read from its cache (memory-mapped),
    or None when it would tokenize the texts: a caller that must tell tokens read from a cache (which
    vouches for its key, not for its own bytes) from tokens just made from the text."""
    return _load_cached(_checked_cache_path(cache_path), _cache_key(texts, tokenizer))


def _checked_cache_path(cache_path) -> Path:
    cache_path = Path(cache_path).expanduser()
    if cache_path.suffix != ".npy":
        raise ValueError(f"cache_path must end in .npy, got {str(cache_path)!r}")
    return cache_path


def _require_tokenizable(texts, tokenizer) -> None:
    if not isinstance(texts, Corpus):
        _require_texts(texts)
    if tokenizer.bos_id is None or tokenizer.eos_id is None:
        raise ValueError(f"tokenizer {tokenizer!r} needs BOS and EOS pieces to mark documents")


def _require_texts(texts) -> None:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
    if not texts:
        raise ValueError("texts is empty: there is nothing to tokenize")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")


def _encode_stream(texts, tokenizer, progress):
    """The token stream, a chunk of documents at a time (1-D arrays)."""
    from tqdm.auto import tqdm

    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    total = texts.n_chars if isinstance(texts, Corpus) else sum(map(len, texts))
    show = total > 10 * ENCODE_CHUNK_CHARS if progress is None else progress
    with tqdm(total=total, desc="tokenizing", unit="char", unit_scale=True, disable=not show) as bar:
        for chunk in _encode_chunks(texts):
            yield np.concatenate([np.asarray(doc_ids, dtype=dtype)
                                  for doc_ids in tokenizer.encode_batch(chunk, bos=True, eos=True)])
            bar.update(sum(map(len, chunk)))
    if isinstance(texts, Corpus):   # before the stream is keyed by the text the first reading hashed
        texts.check_unchanged()


def _encode_chunks(texts):
    """texts in order, in lists of at most ENCODE_CHUNK documents and, unless one document is longer,
    ENCODE_CHUNK_CHARS characters."""
    chunk, chars = [], 0
    for text in texts:
        if chunk and (len(chunk) == ENCODE_CHUNK or chars + len(text) > ENCODE_CHUNK_CHARS):
            yield chunk
            chunk, chars = [], 0
        chunk.append(text)
        chars += len(text)
    if chunk:
        yield chunk


def _cache_key(texts, tokenizer) -> str:
    digest, n_documents, _ = (texts.digest, len(texts), None) if isinstance(texts, Corpus) else _text_digest(texts)
    text = f"npllama-tokens-v{TOKEN_CACHE_FORMAT}\0{tokenizer.fingerprint}\0{n_documents}\0{digest}"
    return hashlib.sha256(text.encode()).hexdigest()


def _load_cached(cache_path: Path, key: str) -> np.ndarray | None:
    from .io.reading import read_json

    meta_path = Path(f"{cache_path}.json")
    try:
        meta = read_json(meta_path, expect=dict, max_bytes=4096)  # a regular file holding an object
        if meta.get("key") != key:
            return None
        ids = np.load(cache_path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError):  # missing, half-written or foreign files: just tokenize again
        return None
    if ids.ndim != 1 or ids.shape[0] != meta.get("n_tokens"):
        return None
    return ids


def _write_stream(cache_path: Path, chunks) -> tuple[np.ndarray, Path]:
    """(the stream, memory-mapped; the temporary file beside cache_path that holds it): the chunks
    written as they come.  An OSError (a full disk, a read-only folder) leaves no file."""
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_name(cache_path, _TMP_TAG)   # a name a resume's remove_stale_temporaries removes
    try:
        with open(tmp, "xb") as f:
            n_tokens, dtype = 0, None
            for ids in chunks:
                if dtype is None:   # NumPy leaves room in the header for any length: rewritten at the end
                    dtype = ids.dtype
                    np.lib.format.write_array_header_1_0(f, _npy_header(0, dtype))
                    start = f.tell()
                f.write(ids.tobytes())
                n_tokens += ids.shape[0]
            f.seek(0)
            np.lib.format.write_array_header_1_0(f, _npy_header(n_tokens, dtype))
            if f.tell() != start:
                raise AssertionError(f"the .npy header of {n_tokens} tokens outgrew its room")
            f.flush()
            os.fsync(f.fileno())
        return np.load(tmp, allow_pickle=False, mmap_mode="r"), tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _npy_header(n_tokens: int, dtype) -> dict:
    return {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (n_tokens,)}


# ----- splitting -----------------------------------------------------------------------------------

def train_val_split(ids: np.ndarray, val_fraction: float = 0.05, bos_id: int | None = None):
    """Split the stream into (train_ids, val_ids): the last `val_fraction` of it is held out.

    With `bos_id`, the cut moves forward to the next document start, so no document is split
    between the two (unless there is none after the cut point).  Deterministic; returns views.
    """
    _require_token_stream("ids", ids)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}")
    n = ids.shape[0]
    cut = n - int(round(n * val_fraction))
    if bos_id is not None:   # the first document start from the cut on, looked for a block at a time
        for start in range(cut, n, SCAN_BLOCK):
            starts = np.flatnonzero(ids[start:start + SCAN_BLOCK] == bos_id)
            if starts.size:
                cut = start + int(starts[0])
                break
    if not 0 < cut < n:
        raise ValueError(f"cannot split {n} tokens with val_fraction={val_fraction}: one side would be "
                         f"empty; use more text or a different val_fraction")
    return ids[:cut], ids[cut:]


# ----- batches ---------------------------------------------------------------------------------------

class BatchLoader:
    """Shuffled (tokens, targets) batches of fixed-length windows, resumable exactly.

    Windows: window w is ids[w*seq_len : w*seq_len + seq_len + 1] -- consecutive windows share one
    token (the last target of one is the first input of the next), so every token of the stream
    is a target exactly once per epoch.  tokens = window[:-1], targets = window[1:] (next-token
    prediction: targets[b, t] is the token after tokens[b, t]).

    Epochs: each epoch visits the windows in a fresh random order drawn from (seed, epoch), in
    `len(loader)` batches of `batch_size`; the few windows that do not fill a last batch are left
    out of that epoch (different ones each epoch).

    Position: (epoch, batch_index) is the whole state -- the order is recomputed from the seed --
    so `state_dict()` is a small JSON-able dict, and a loader restored with `load_state_dict`
    continues with exactly the batches an uninterrupted run would have produced.

    `next_batch()` runs forever, crossing into the next epoch when one ends; `for tokens, targets
    in loader` runs over the rest of the current epoch.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, seed: int = 0):
        _require_token_stream("ids", ids)
        _require_positive_int("batch_size", batch_size)
        _require_positive_int("seq_len", seq_len)
        _require_int("seed", seed)
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.n_windows = (ids.shape[0] - 1) // seq_len
        if self.n_windows < batch_size:
            raise ValueError(
                f"the corpus has {ids.shape[0]} tokens, but one batch of {batch_size} windows of "
                f"{seq_len} tokens needs {batch_size * seq_len + 1}; use a smaller --batch-size or "
                f"--seq-len (or more text)")
        self.ids = ids
        self.batch_size = int(batch_size)  # plain ints: state_dict() must be JSON-able
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.epoch = 0
        self.batch_index = 0
        self._order_epoch = None
        self._order = None

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.n_windows // self.batch_size

    @property
    def tokens_per_batch(self) -> int:
        """batch_size * seq_len: the tokens one batch predicts."""
        return self.batch_size * self.seq_len

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The next (tokens, targets), each int64 (batch_size, seq_len); advances the position."""
        order = self._epoch_order(self.epoch)
        first = self.batch_index * self.batch_size
        batch = windows(self.ids, order[first:first + self.batch_size], self.seq_len)
        self.batch_index += 1
        if self.batch_index == len(self):
            self.epoch, self.batch_index = self.epoch + 1, 0
        return _split_inputs_targets(batch)

    def __iter__(self):
        epoch = self.epoch
        while self.epoch == epoch:
            yield self.next_batch()

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:  # one permutation per epoch, recomputed from (seed, epoch)
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._order_epoch = epoch
        return self._order

    # ----- training state ----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The position and what it depends on, as plain ints (JSON-able)."""
        return {"epoch": self.epoch, "batch_index": self.batch_index, "seed": self.seed,
                "batch_size": self.batch_size, "seq_len": self.seq_len, "n_windows": self.n_windows}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()`; refuses one taken with another corpus, shape or seed."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from BatchLoader.state_dict(), got {type(state).__name__}")
        missing = [k for k in ("epoch", "batch_index", "seed", "batch_size", "seq_len", "n_windows")
                   if k not in state]
        if missing:
            raise ValueError(f"loader state is missing {', '.join(missing)}")
        for name in ("seed", "batch_size", "seq_len", "n_windows"):
            if state[name] != getattr(self, name):
                raise ValueError(
                    f"loader state was saved with {name}={state[name]} but this loader has "
                    f"{name}={getattr(self, name)}; resume with the same corpus, tokenizer, "
                    f"--batch-size, --seq-len and seed")
        _require_int("epoch", state["epoch"])
        _require_int("batch_index", state["batch_index"])
        if state["epoch"] < 0 or not 0 <= state["batch_index"] < len(self):
            raise ValueError(f"loader state has epoch={state['epoch']}, batch_index={state['batch_index']}; "
                             f"expected epoch >= 0 and 0 <= batch_index < {len(self)}")
        self.epoch, self.batch_index = int(state["epoch"]), int(state["batch_index"])


def evaluation_batches(ids: np.ndarray, batch_size: int, seq_len: int,
                       max_batches: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fixed validation batches: the windows in stream order (no shuffling), as (tokens, targets).

    Windows are cut as in BatchLoader.  They are grouped `batch_size` at a time, the windows left
    over in a last, smaller batch; the tokens after the last whole window (fewer than seq_len + 1)
    make one shorter window of their own, in a batch of one row, so every held-out target is scored
    exactly once.  (As in every window, a target near its window's start sees few tokens before it.)  At most `max_batches` batches are returned (None: all; weight each batch's mean
    loss by its count of targets).  The same arguments always give the same batches, so validation
    losses are comparable from step to step and run to run.
    """
    _require_token_stream("ids", ids)
    _require_positive_int("batch_size", batch_size)
    _require_positive_int("seq_len", seq_len)
    if max_batches is not None:
        _require_positive_int("max_batches", max_batches)
    n_windows = (ids.shape[0] - 1) // seq_len
    starts = range(0, n_windows, batch_size)[:max_batches]   # only the batches returned are made
    batches = [_split_inputs_targets(windows(ids, np.arange(start, min(start + batch_size, n_windows)), seq_len))
               for start in starts]
    tail = ids[n_windows * seq_len:]            # the last whole window's last token, then the rest
    if tail.shape[0] >= 2 and (max_batches is None or len(batches) < max_batches):
        batches.append(_split_inputs_targets(np.asarray(tail, dtype=np.int64)[None]))
    return batches


def windows(ids: np.ndarray, window_indices: np.ndarray, seq_len: int) -> np.ndarray:
    """Windows of seq_len + 1 tokens, window w starting at w * seq_len: int64 (len(window_indices), seq_len + 1)."""
    starts = np.asarray(window_indices, dtype=np.int64) * seq_len               # (B,)
    positions = starts[:, None] + np.arange(seq_len + 1, dtype=np.int64)[None]  # (B, seq_len + 1)
    return np.asarray(ids[positions], dtype=np.int64)


def _split_inputs_targets(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, T + 1) windows -> tokens (B, T) and next-token targets (B, T), both contiguous."""
    return np.ascontiguousarray(batch[:, :-1]), np.ascontiguousarray(batch[:, 1:])


# ----- argument checks -------------------------------------------------------------------------------

def _require_token_stream(name: str, ids) -> None:
    if not isinstance(ids, np.ndarray) or not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name} must be an integer numpy array of token ids, got "
                        f"{getattr(ids, 'dtype', type(ids).__name__)}")
    if ids.ndim != 1:
        raise ValueError(f"{name} must be a 1-D token stream, got shape {ids.shape}")
    if ids.shape[0] < 2:
        raise ValueError(f"{name} has {ids.shape[0]} token(s); at least 2 are needed for one "
                         f"(input, target) pair")


def _require_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")


def _require_positive_int(name: str, value) -> None:
    _require_int(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


__all__ = ["load_texts", "Corpus", "split_documents", "tokenize_corpus", "train_val_split", "BatchLoader",
           "evaluation_batches", "windows"]
