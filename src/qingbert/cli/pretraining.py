"""The pretraining verbs: ``pretrain`` and ``fill-mask``."""

from __future__ import annotations

from qingbert.cli.common import PRETRAIN_FLAGS, add_train_args, positive, positive_int, recipe_with_flags

HELP = {
    "pretrain": "pretraining on prepared shards (from scratch or continued): whole-word-masking MLM, MacBERT or "
                "ELECTRA",
    "fill-mask": "show a masked-LM model's top fillers for each [MASK] in a text",
}


def add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help=HELP["pretrain"], description=HELP["pretrain"] + (
        ". Scale out with `accelerate launch --num_processes N -m qingbert pretrain ...`."))
    p.add_argument("--model", required=True,
                   help="zoo name (from scratch, e.g. minirbt-h256), a model folder or a hub id (continued)")
    p.add_argument("--data", required=True, help="a folder made by `qingbert prepare`")
    p.add_argument("--out", required=True, help="output model folder (checkpoints go inside)")
    p.add_argument("--config", default=None, help="YAML recipe: any option below (flat or under train:/masking:)")
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in --out, replacing the checkpoints of an earlier run there")
    add_train_args(p, PRETRAIN_FLAGS)
    p.add_argument("--document-mask", action="store_true", default=None,
                   help="packed texts attend only to themselves (no attention across the texts of a sequence)")
    p.add_argument("--layers", type=positive_int, default=None,
                   help="for a zoo shape: number of layers (a smaller teacher)")
    p.add_argument("--objective", default=None, choices=("wwm", "macbert", "electra"),
                   help="wwm (whole-word-masking MLM, default), macbert (similar-word correction + n-grams, needs "
                        "--similar-words) or electra (generator + replaced-token detection)")
    p.add_argument("--similar-words", default=None, help="macbert: folder from `qingbert similar-words DATA`")
    p.add_argument("--sop", action="store_true", default=None, help="macbert: add sentence-order prediction")
    p.add_argument("--generator-hidden", type=positive_int, default=None,
                   help="electra: generator width (default a quarter of the discriminator's)")
    p.add_argument("--disc-weight", type=positive, default=None,
                   help="electra: weight of the discriminator loss (default 50, as Chinese-ELECTRA)")
    p.set_defaults(run=run_pretrain)


def run_pretrain(args) -> int:
    from qingbert.pretraining.pretrain import pretrain

    recipe = recipe_with_flags(args, PRETRAIN_FLAGS)
    if args.resume:
        recipe["resume"] = True
    if args.overwrite:
        recipe["overwrite"] = True
    if args.document_mask:
        recipe["document_mask"] = True
    if args.layers:
        recipe.setdefault("overrides", {})["num_hidden_layers"] = args.layers
    if args.objective:
        recipe["objective"] = args.objective
    for section, flag in (("macbert", "similar_words"), ("macbert", "sop"), ("electra", "generator_hidden"),
                          ("electra", "disc_weight")):
        if getattr(args, flag) is not None:
            recipe.setdefault(section, {})[flag] = getattr(args, flag)
    m = pretrain(args.model, args.data, args.out, recipe)
    if m:
        b, a = m.get("eval_before") or {}, m.get("eval_after") or {}
        if a:
            who = " (generator)" if m.get("objective") == "electra" else ""
            print(f"masked-token accuracy{who} {100 * b.get('masked_accuracy', 0):.1f}% -> "
                  f"{100 * a['masked_accuracy']:.1f}%, perplexity {b.get('perplexity', float('nan')):.1f} -> "
                  f"{a['perplexity']:.1f}")
            if "disc_accuracy" in a:
                print(f"replaced-token detection: accuracy {100 * a['disc_accuracy']:.1f}%, "
                      f"F1 {100 * a.get('disc_f1', 0):.1f}% on replaced tokens")
        print(f"{m['steps']} steps in {m['elapsed_s']:.0f} s; wrote {args.out} (loads with transformers)")
    return 0


def add_fill_mask(sub) -> None:
    p = sub.add_parser("fill-mask", help=HELP["fill-mask"], description=HELP["fill-mask"])
    p.add_argument("model", help="a model folder or hub id")
    p.add_argument("text", help='text with [MASK], e.g. "今天[MASK]气很好"')
    p.add_argument("--top-k", type=positive_int, default=5)
    p.set_defaults(run=run_fill_mask)


def run_fill_mask(args) -> int:
    from qingbert.pretraining.pretrain import fill_mask, format_fill

    print(format_fill(args.text, fill_mask(args.model, args.text, args.top_k)))
    return 0


COMMANDS = {"pretrain": add_pretrain, "fill-mask": add_fill_mask}
