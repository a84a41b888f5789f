"""Continue training a saved npllama model on many processes or machines, with transformers +
accelerate (PyTorch's distributed data parallel), then bring it back to npllama.

npllama trains on one machine.  Its saved model is a Hugging Face folder, so when one CPU is not
enough the same folder can go to an existing engine and come back:

    accelerate launch --multi_gpu --num_processes 8 -m npllama.hf_train \\
        --model runs/tiny/model --data stories.txt --steps 2000 --out runs/tiny-more
    npllama generate --model runs/tiny-more

Each process reads the same corpus, tokenized with the folder's tokenizer (documents as
`<s> doc </s>`, cut as --doc-separator says, as `npllama train` does), cuts it into windows of
--seq-len tokens, and trains on its own share of every batch; gradients are averaged across
processes every step.  AdamW has `npllama train`'s settings (betas 0.9, 0.95; the gradient's
global norm clipped at 1.0; the matrices decayed, not the norm weights) at a constant --lr.
The result is written in float32 with transformers' save_pretrained plus the folder's tokenizer
files (tokenizer.model, in it or beside it in its run folder; tokenizer.json, ...), which
`Llama.from_pretrained`, `npllama generate` and transformers' AutoTokenizer read.  A masked-LM
model or a classifier is refused: this trains the causal next-token loss of LlamaForCausalLM.
GPUs and several machines are accelerate's business: `accelerate config` once per machine, then
the same command.

Needs `pip install 'npllama[distributed]'` (torch, transformers, accelerate); npllama itself
never imports this module.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import time
from pathlib import Path

from .commands.tokenizer import DEFAULT_DOC_SEPARATOR
from .io.errors import CheckpointError
from .io.hf import CHAT_TEMPLATE_FILE, CONFIG_NAME, TOKENIZER_FILES, read_config
from .io.reading import read_json
from .optim import decay_groups
from .runs import refuse_other_than_a_language_model
from .train import ADAM_EPS, TrainConfig


# the settings npllama train checks as hf_train takes them (TrainConfig's field names = the flags' dests)
_TRAIN_SETTINGS = ("steps", "batch_size", "seq_len", "lr", "weight_decay", "beta1", "beta2", "grad_clip", "seed",
                   "doc_separator")


def build_parser() -> argparse.ArgumentParser:
    from .commands import HelpFormatter   # no "(default: None)" after a required flag
    from .commands.train import add_adamw_flags   # the optimizer's settings, with npllama train's defaults

    p = argparse.ArgumentParser(
        prog="accelerate launch [--num_processes N] -m npllama.hf_train",
        description="Continue training a saved npllama model (a Hugging Face folder) with "
                    "transformers + accelerate, on as many processes or machines as accelerate runs.",
        formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="the Hugging Face folder to start from (e.g. runs/tiny/model)")
    p.add_argument("--data", required=True, help="text to train on: .txt, .jsonl or a folder (as `npllama train --data`)")
    p.add_argument("--doc-separator", default=DEFAULT_DOC_SEPARATOR, metavar="blank-line|line|marker:TEXT|whole-file",
                   help="how a .txt file is cut into documents, each trained as <s> document </s>: give the "
                        "value the model was trained with (`npllama train --doc-separator`)")
    p.add_argument("--out", required=True, help="the folder to write the trained model to, in float32 (the "
                   "precision it trains in) whatever dtype --model was saved in; not --model's folder nor one above it")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per process per step")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (constant)")
    add_adamw_flags(p, "global gradient-norm limit, over all processes' averaged gradient",
                    same="as `npllama train`'s")
    p.add_argument("--seed", type=int, default=0, help="seed for the data order")
    p.add_argument("--log-every", type=int, default=10, help="print the loss every N steps")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is available")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    corpus = _read_corpus(args)
    import torch
    from accelerate import Accelerator
    from transformers import LlamaForCausalLM

    # Without a GPU the processes must be told to meet on the CPU (gloo); accelerate launch's
    # --multi_gpu starts them through torch.distributed either way.
    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available())
    model_dir, out = Path(args.model), Path(args.out)
    windows = _token_windows(model_dir, corpus, args.seq_len)
    generator = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(windows, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         generator=generator, collate_fn=_as_int64_batch)
    model = LlamaForCausalLM.from_pretrained(model_dir).float()  # train in float32 whatever was saved
    optimizer = torch.optim.AdamW(decay_groups(model.named_parameters(), args.weight_decay), lr=args.lr,
                                  betas=(args.beta1, args.beta2), eps=ADAM_EPS)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if len(loader) == 0:
        raise SystemExit(f"hf_train: the corpus has {len(windows)} windows of {args.seq_len} tokens, fewer "
                         f"than one batch per process; use less --batch-size or --seq-len or more text")

    model.train()
    losses, step, start = [], 0, time.time()
    while step < args.steps:
        for batch in loader:
            loss = model(input_ids=batch, labels=batch).loss  # transformers shifts the labels
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            mean_loss = accelerator.reduce(loss.detach(), reduction="mean").item()
            losses.append(mean_loss)
            if step % args.log_every == 0 or step == args.steps:
                accelerator.print(f"step {step}/{args.steps}  loss {mean_loss:.4f}  "
                                  f"({time.time() - start:.0f}s, {accelerator.num_processes} processes)")
            if step == args.steps:
                break

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(out)
        _write_tokenizer_files(model_dir, out)
        record = {"num_processes": accelerator.num_processes, "steps": step, "losses": losses,
                  "tokens_per_step": accelerator.num_processes * args.batch_size * args.seq_len,
                  "from": str(model_dir)}
        (out / "hf_train.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        accelerator.print(f"wrote {out}; back in npllama: npllama generate --model {out}")
    accelerator.wait_for_everyone()
    # the process group is taken down here, not left to interpreter exit, where a rank's gloo
    # threads may still be running: "terminate called without an active exception", exit -6
    accelerator.end_training()
    return 0 if all(math.isfinite(x) for x in losses) else 1


def _check_args(args) -> None:
    """Every mistake in the arguments as one line, before torch is imported (in every process)."""
    def fail(message):
        raise SystemExit(f"hf_train: error: {message}")

    if args.log_every < 1:
        fail(f"--log-every must be at least 1, got {args.log_every}")
    try:   # npllama train's own checks of these settings (lr * weight_decay below 1, betas in [0, 1), ...)
        TrainConfig(**{name: getattr(args, name) for name in _TRAIN_SETTINGS})
    except (TypeError, ValueError) as e:   # "weight_decay must be ...": named as the flag
        fail(re.sub(r"\b(" + "|".join(_TRAIN_SETTINGS) + r")\b(?!-)", lambda m: "--" + m.group().replace("_", "-"), str(e)))
    model_dir, out = Path(args.model), Path(args.out)
    if out.exists() and model_dir.exists() and model_dir.resolve().is_relative_to(out.resolve()):
        fail(f"--out {args.out!r} holds --model {args.model!r}: the trained model would be written over or among "
             f"the files it starts from; give another folder")
    expected = "expected a folder saved by npllama, e.g. runs/tiny/model"
    if not (model_dir / CONFIG_NAME).is_file():
        fail(f"--model {args.model!r} has no {CONFIG_NAME} ({expected})")
    if not _tokenizer_files(model_dir).keys() & {"tokenizer.model", "tokenizer.json"}:
        fail(f"--model {args.model!r} has neither tokenizer.model (in or beside it) nor tokenizer.json ({expected})")
    try:
        config_file = model_dir / CONFIG_NAME
        read_config(config_file)   # a folder npllama could not load back is refused before it trains
        refuse_other_than_a_language_model(config_file, read_json(config_file, expect=dict, error=CheckpointError),
                                           f"--model {args.model!r}", "hf_train (LlamaForCausalLM's next-token loss)",
                                           True, "give a model `npllama train` trained with --objective causal (the default)",
                                           args.model)
    except ValueError as e:   # CheckpointError too: a config.json that is not JSON
        fail(str(e))


def _read_corpus(args):
    """--data read once, as npllama train reads it: what it refuses (a missing path, a file that is
    not .txt or .jsonl, no text) is one line here, before torch is imported."""
    from .data import Corpus

    try:
        return Corpus(args.data, args.doc_separator, progress=False)
    except (OSError, ValueError) as e:
        raise SystemExit(f"hf_train: error: --data: {e}") from None


# What a folder reads and writes text with: its tokenizer files (transformers' layout) and chat template
_TEXT_FILES = TOKENIZER_FILES + (CHAT_TEMPLATE_FILE,)


def _tokenizer_files(model_dir: Path) -> dict[str, Path]:
    """The tokenizer files and chat template the model is read with, by name: the folder's own, and a
    tokenizer.model beside it in its run folder (where npllama finds it too: `runs.find_tokenizer`).
    The trained folder gets them all, so that npllama and AutoTokenizer read the tokenizer the model
    was trained with, and `npllama chat` talks in the template it was fine-tuned with."""
    from .runs import TOKENIZER_FILE, find_tokenizer

    files = {name: model_dir / name for name in _TEXT_FILES if (model_dir / name).is_file()}
    if TOKENIZER_FILE not in files:
        try:
            files[TOKENIZER_FILE] = find_tokenizer(model_dir)
        except FileNotFoundError:
            pass
    return files


def _write_tokenizer_files(model_dir: Path, out: Path) -> None:
    """--model's tokenizer files and chat template copied into `out`, and the ones it lacks removed
    from there (an earlier model's tokenizer.json, say, which AutoTokenizer would read)."""
    given = _tokenizer_files(model_dir)
    for name in _TEXT_FILES:
        if name in given:
            shutil.copyfile(given[name], out / name)
        else:
            (out / name).unlink(missing_ok=True)


def _token_windows(model_dir: Path, corpus, seq_len: int):
    """The corpus as (n, seq_len) consecutive, non-overlapping windows of token ids, kept in the
    stream's own small dtype (uint16 for most vocabularies): `_as_int64_batch` widens a batch at a
    time, so the whole corpus never sits in memory at four times its size."""
    from .data import tokenize_corpus
    from .runs import load_tokenizer

    # the text is read a block at a time, as npllama train reads the folder
    ids = tokenize_corpus(corpus, load_tokenizer(model_dir), progress=False)
    n = len(ids) // seq_len
    return ids[: n * seq_len].reshape(n, seq_len)


def _as_int64_batch(windows) -> "torch.Tensor":
    """DataLoader's collate_fn: a list of windows as one (B, seq_len) int64 tensor (embedding ids)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.stack(windows).astype(np.int64))


if __name__ == "__main__":
    raise SystemExit(main())
