"""The hf-forkmerge command: parse, then call the library. Heavy imports wait until a command runs."""

import argparse
import sys

EXAMPLES = """examples:
  hf-forkmerge train --config recipes/minilm/forkmerge/demo.yaml --max_steps 100 --output_dir out/demo
  hf-forkmerge train --config recipes/minilm/forkmerge/lora.yaml --tasks.sentiment.data.num_train 200
  hf-forkmerge compare --config recipes/minilm/forkmerge/demo.yaml
  hf-forkmerge card out/demo
  hf-forkmerge push out/demo --hub_model_id me/demo-forkmerge
  accelerate launch --config_file recipes/accelerate_configs/ddp.yaml -m hf_forkmerge.cli train --config ...

Any recipe value can be overridden: --KEY VALUE sets training.KEY (or a top-level key), --a.b.c VALUE sets a nested
key; values are read as YAML."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-forkmerge",
        description="ForkMerge auxiliary-task learning from YAML recipes.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train from a recipe", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", required=True, help="the recipe YAML")
    train.add_argument("--push_to_hub", action="store_true", default=None, help="upload the result to the Hub")
    train.add_argument("--hub_model_id", help="the Hub repo (default: the recipe's, or the output folder's name)")
    methods = ["stl", "ew", "gcs", "pcgrad", "uw", "forkmerge"]
    compare = commands.add_parser("compare", help="train ForkMerge and the baselines on one budget and tabulate them")
    compare.add_argument("--config", required=True, help="the recipe YAML")
    compare.add_argument("--methods", nargs="+", default=methods, choices=methods)
    card = commands.add_parser("card", help="render the model card of a finished run again")
    card.add_argument("output_dir")
    card.add_argument("--hub_model_id", help="the repo name to show in the card")
    push = commands.add_parser("push", help="upload a finished run to the Hub (e.g. again, after a failed push)")
    push.add_argument("output_dir")
    push.add_argument("--hub_model_id", required=True, help="the Hub repo, e.g. me/my-forkmerge-model")
    push.add_argument("--hub_token", help="a Hub token (default: the one `hf auth login` saved)")
    push.add_argument("--hub_private_repo", action="store_true", default=None, help="create the repo as private")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    options, overrides = parser.parse_known_args(argv)
    if overrides and options.command in ("card", "push"):
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    try:
        return _run(options, overrides)
    except Exception as error:
        from .cards import HubPushError
        from .recipes import RecipeError

        if isinstance(error, (RecipeError, HubPushError)):
            print(f"hf-forkmerge: error: {error}", file=sys.stderr)
            return 2 if isinstance(error, RecipeError) else 1
        raise


def _run(options, overrides) -> int:
    if options.command in ("card", "push"):
        from .cards import push_to_hub, write_card

        try:
            card = write_card(options.output_dir, repo_id=options.hub_model_id)  # with push: the snippet names the repo
        except FileNotFoundError as error:
            print(f"hf-forkmerge: error: {error}", file=sys.stderr)
            return 2
        if options.command == "card":
            print(card)
        else:
            pushed = push_to_hub(options.output_dir, options.hub_model_id, options.hub_token, options.hub_private_repo)
            print(f"pushed to {pushed}")
        return 0

    from .recipes import load_recipe

    recipe = load_recipe(options.config, overrides)  # every recipe error surfaces here, before any model loads
    from accelerate import PartialState

    from . import runner

    state = PartialState()  # under accelerate launch / torchrun every process gets here; the main one prints
    if options.command == "compare":
        comparison = runner.compare_recipe(recipe, methods=options.methods)
        if state.is_main_process:
            print(runner.comparison_table(comparison))
    else:
        result = runner.train_recipe(recipe, push=options.push_to_hub, hub_model_id=options.hub_model_id)
        if state.is_main_process:
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
            print(f"target {recipe.target} on {result['split']}: {metrics} ({result['seconds']:.1f} s of training)")
            if "pushed_to" in result:
                print(f"pushed to {result['pushed_to']}")
    # Leave together and close the process group: without this, gloo now and then aborts at exit.
    state.wait_for_everyone()
    state.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
