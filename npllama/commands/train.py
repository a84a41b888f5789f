"""`npllama train`: pre-train a small LLaMA (defaults: the tiny preset on the built-in stories)."""
import dataclasses
import sys

from . import (HelpFormatter, UsageError, defaults_only_when_given, prepare_training_process,
               doc_separator_rule, refuse_ignored_flags)


def register(subparsers) -> None:
    from ..config import ATTENDS_CAUSALLY
    from ..train import TrainConfig

    d = TrainConfig()
    p = subparsers.add_parser(
        "train", help="pre-train a model (no arguments: tiny preset on the built-in corpus)",
        description="Train a LLaMA from scratch (or from --init-from's weights) with the causal next-token "
                    "loss (or --objective mlm's masked-LM loss). With no arguments it "
                    "trains the `tiny` preset on a built-in corpus of generated children's stories in a "
                    "few minutes, then prints samples; `npllama generate` continues text from that run.",
        formatter_class=HelpFormatter)
    p.add_argument("--data", default=None, help="training text: a .txt file (cut into documents as "
                   "--doc-separator says), a folder of .txt/.jsonl files, or a .jsonl file with a \"text\" "
                   "field (default: the built-in stories)")
    p.add_argument("--doc-separator", default=d.doc_separator, metavar="blank-line|line|marker:TEXT|whole-file",
                   help="how a .txt file is cut into documents (each trained as <s> document </s>): at blank "
                        "lines; at every newline (line: a paragraph per line, as Chinese text is often written); "
                        "at every occurrence of TEXT (e.g. marker:<|endoftext|>), so blank lines stay "
                        "inside a document; or not at all")
    p.add_argument("--val-data", default=None, metavar="FILE",
                   help="held-out text for the validation loss (a file or folder read like --data); "
                        "then all of --data is trained on (default: the end of --data)")
    p.add_argument("--val-fraction", type=float, default=None, help="share of --data's tokens held out "
                   "(its end) for the validation loss; refused with --val-data (default: 0.05)")
    p.add_argument("--eval-batches", type=int, default=d.eval_batches, help="batches of held-out text "
                   "scored at each evaluation (0: all of it)")
    p.add_argument("--out", default=d.out, help="run folder (checkpoints, logs, final model)")
    p.add_argument("--preset", default=d.preset, help="model shape: tiny, stories260k, stories15m, "
                   "stories42m, stories110m (not with --init-from, whose folder gives the shape)")
    shape = p.add_argument_group(
        "model shape", "on top of --preset; Hugging Face's field names in brackets (a model folder's "
                       "config.json works as --config). Fixed for the run: --resume refuses a change")
    shape.add_argument("--config", dest="model_config", default=None, metavar="FILE.json",
                       help="a JSON file of Hugging Face config fields (hidden_size, num_hidden_layers, "
                            "rope_theta, tie_word_embeddings, ...) applied over the preset; the flags "
                            "below apply over it. bos/eos ids are the tokenizer's; a pad_token_id is kept "
                            "(config.json) and its embedding row gets no gradient from its lookups, as in "
                            "transformers, so under the causal objective one that is <s> or </s> is refused (pretraining "
                            "pads nothing: set it to null)")
    shape.add_argument("--hidden-size", dest="hidden_size", type=int, default=None, metavar="N",
                       help="width of the residual stream [hidden_size]")
    shape.add_argument("--layers", dest="num_hidden_layers", type=int, default=None, metavar="N",
                       help="transformer blocks [num_hidden_layers]")
    shape.add_argument("--heads", dest="num_attention_heads", type=int, default=None, metavar="N",
                       help="query heads; must divide --hidden-size [num_attention_heads]")
    shape.add_argument("--kv-heads", dest="num_key_value_heads", type=int, default=None, metavar="N",
                       help="key/value heads (grouped-query attention); must divide --heads [num_key_value_heads]")
    shape.add_argument("--intermediate-size", dest="intermediate_size", type=int, default=None, metavar="N",
                       help="width of the SwiGLU feed-forward layer [intermediate_size]")
    shape.add_argument("--context", dest="max_position_embeddings", type=int, default=None, metavar="N",
                       help="longest sequence the model is made for; at least --seq-len (default: the "
                            "preset's, raised to --seq-len) [max_position_embeddings]")
    shape.add_argument("--init-from", default=None, metavar="DIR",
                       help="start from the weights of this Hugging Face model folder, or of a run "
                            "folder's model/ (and its tokenizer.model if it has one); its shape is used, "
                            "so shape flags that disagree with it are refused")
    p.add_argument("--tokenizer", default=None, help="use this SentencePiece .model instead of training one")
    p.add_argument("--vocab-size", type=int, default=None, help="pieces of the tokenizer trained for "
                   "the run, and so the model's vocabulary (default: --config's vocab_size, else the preset's)")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps in total")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="token windows per micro-batch")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per training window")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per step")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=None,
                   help="learning rate at the end of the cosine (default: a tenth of --lr)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="linear warmup steps (default: a tenth of --steps, at most 40)")
    add_adamw_flags(p)
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between validation losses (0: only at the end)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints (0: only at the end)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the initial weights, the batch order, "
                   "--objective mlm's masks and the samples printed at the end")
    p.add_argument("--threads", type=int, default=None,
                   help="split each batch over this many threads, BLAS on one thread in each; each "
                        "thread holds its own copy of the gradients (1: no split, BLAS threads its own "
                        "products; default: the count that was fastest on this machine for this model and "
                        "batch, from 1 up to BLAS's threads, timed over a few steps on the first run and "
                        "cached in $NPLLAMA_CACHE_DIR, else $XDG_CACHE_HOME/npllama, else ~/.cache/npllama, and in "
                        "the run folder for --resume)")
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "float64"], help="floating-point type of "
                   "the weights and the arithmetic")
    p.add_argument("--objective", default=d.objective, choices=list(ATTENDS_CAUSALLY),
                   help="causal: LLaMA's next-token loss; mlm: BERT-style masked-LM on the same stack "
                        "without the causal mask (shown for comparison, article §3.2.2)")
    p.add_argument("--backend", default=None, choices=["numpy", "numba"],
                   help="op implementations (default: $NPLLAMA_BACKEND or numba). With numba, a first run "
                        "after an install or an edit of a kernel (a cold cache) has a helper process compile "
                        "the kernels while its first steps run on the NumPy reference (their log.jsonl lines "
                        "say \"backend\": \"numpy\"); NPLLAMA_PARALLEL_COMPILE=0 makes the run compile them "
                        "first, so that every step runs on the kernels")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with the settings it was started "
                        "with; options given with it change those settings (the ones that define the "
                        "run -- data and held-out text, preset and model shape, --init-from, tokenizer, batch shape, "
                        "seed, dtype, objective -- are refused, and so is a --data file edited since the checkpoint)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many steps (with a checkpoint); --resume continues the run")
    p.add_argument("--skip-nonfinite", action="store_true",
                   help="skip a batch whose loss or gradient is NaN/Inf instead of stopping")
    p.add_argument("--samples", type=int, default=d.samples, help="samples printed at the end (under --objective causal: a masked-LM model does not generate text)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    defaults_only_when_given(p, {f.name for f in dataclasses.fields(TrainConfig)} | {"no_progress"})
    p.set_defaults(run=run)


def add_adamw_flags(p, grad_clip_help: str = "global gradient-norm limit", same: str = "") -> None:
    """--weight-decay, --beta1, --beta2 and --grad-clip, with `npllama train`'s defaults (hf_train takes
    them too, `same` saying so in each help text: "as `npllama train`'s")."""
    from ..train import TrainConfig

    d = TrainConfig()
    also = f"; {same}" if same else ""
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="AdamW's decoupled weight decay, of every matrix (the embeddings included), not the "
                        f"RMSNorm weights (lr * weight decay must stay below 1{also})")
    p.add_argument("--beta1", type=float, default=d.beta1, help="AdamW's decay rate of the gradient's "
                   f"running mean, in [0, 1){also}")
    p.add_argument("--beta2", type=float, default=d.beta2, help="AdamW's decay rate of the squared "
                   f"gradient's running mean, in [0, 1){also}")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help=grad_clip_help + also)


def run(args) -> int:
    from ..backend import get_backend, use_backend
    from ..config import attends_causally
    from ..io.atomic import refuse_a_file_above
    from ..io.errors import CheckpointError
    from ..runs import RunInUseError
    from ..train import CheckpointWriteError, TrainConfig, TrainingError, resume_config, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields}  # only options on the command line
    if "no_progress" in vars(args):
        given["progress"] = not args.no_progress
    try:
        # --resume: the run's saved settings, with the options given on top (changes to the ones
        # that define the run are refused by train(); the others are applied and recorded)
        tc = resume_config(given.get("out", TrainConfig.out), **given) if args.resume else TrainConfig(**given)
        refuse_a_file_above(tc.out, "--out")   # before the model is built (was "[Errno 20] Not a directory")
        refuse_ignored_flags(given, tc, [doc_separator_rule("--data or --val-data"),
                                         # as --config beside --init-from is refused (model_shape.init_from_config)
                                         ("preset", lambda c: c.init_from is None,
                                          "gives the model's shape, which --init-from's folder gives instead"),
                                         # a bidirectional masked-LM model does not generate text
                                         ("samples", lambda c: attends_causally(c.objective) or c.samples == 0,
                                          "prints generated text, which only the causal objective's model "
                                          "writes (--objective mlm prints no samples)")])
    except CheckpointError:
        raise          # a damaged saved run: its message names the file's own fields, not flags
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    prepare_training_process()
    with use_backend(args.backend or get_backend()):
        try:
            result = train(tc, resume=args.resume)
        except (TrainingError, CheckpointWriteError, RunInUseError) as error:  # not a usage mistake
            print(f"npllama train: stopped: {error}", file=sys.stderr)
            return 1
    # a planned stop (--stop-after) is a success; a signal gives 128 + its number (130 for Ctrl-C)
    return 128 + result.stop_signal if result.stop_signal is not None else 0
