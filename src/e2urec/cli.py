"""`e2urec` command line: each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from e2urec.config import add_flags, from_dict, given_flags, load_yaml, parse_assignments


def _protocol(args):
    from e2urec.data.protocol import Protocol

    values = load_yaml(args.config) if getattr(args, "config", None) else {}
    values = values.get("protocol", values)
    return from_dict(Protocol, {**values, **given_flags(args, Protocol)}, "protocol")


PROTOCOL_HELP = {
    "history": "items shown in the prompt (K)",
    "min_history": "samples with fewer earlier ratings are dropped",
    "last": "keep the most recent N samples",
    "split": "train,valid,test fractions, in time order",
    "forget_ratio": "share of train users who ask to be forgotten",
    "seed": "seed choosing forgotten users",
    "threshold": 'rating > threshold is "Yes."',
    "sample": "draw this many samples of each split (seeded, many users); default: all",
    "holdout": "held-out share of train for the attack",
    "canaries": "canaries per forgotten user",
    "canary_copies": "times each canary is repeated in training",
    "template": "prompt template: paper, compact, or a Jinja2 file (README: templates)",
    "answers": "the words the model answers with; their first tokens are scored",
}
PROTOCOL_METAVARS = {"split": "TRAIN,VALID,TEST", "sample": "TRAIN,VALID,TEST", "answers": "YES,NO"}


def add_prepare(sub, protocol_flags: bool = True) -> None:
    """`protocol_flags` False where another command is parsed: Protocol's module imports pandas
    and DuckDB, which every command would otherwise wait for before it starts."""
    p = sub.add_parser("prepare", help="raw data -> prompts -> train/valid/test/retain/forget")
    p.add_argument(
        "--dataset",
        default="movielens",
        help="data set name (default: movielens); prompts: your own prompts (README)",
    )
    p.add_argument("--raw", help="raw file or folder (the default data set needs none)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="YAML file with protocol options")
    if protocol_flags:
        from e2urec.data.protocol import Protocol  # its fields are the flags

        add_flags(p, Protocol, PROTOCOL_HELP, PROTOCOL_METAVARS)
    p.add_argument(
        "--memory-limit",
        help="memory for the data engine, e.g. 2GB (default: an eighth of the machine's RAM)",
    )
    log = p.add_argument_group("--dataset interactions (a CSV or Parquet log)")
    log.add_argument("--user-col", help="user column (default: user)")
    log.add_argument("--item-col", help="item column (default: item)")
    log.add_argument("--rating-col", help="rating column (default: rating)")
    log.add_argument("--time-col", help="unix seconds or ISO 8601 column (default: timestamp)")
    log.add_argument("--titles", help="CSV with columns item,title (default: the item id)")
    p.set_defaults(run=run_prepare)


def run_prepare(args) -> None:
    from e2urec.data import prepare

    # Only options given are passed: each loader takes its own, and refuses the others.
    names = ("user_col", "item_col", "rating_col", "time_col", "titles")
    options = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    manifest = prepare(
        args.out,
        dataset=args.dataset,
        raw=args.raw,
        protocol=_protocol(args),
        memory_limit=args.memory_limit,
        **options,
    )
    print(json.dumps({k: manifest[k] for k in ("dataset", "counts", "users")}, indent=2))
    print(f"wrote {args.out}")


def _base_option(p) -> None:
    p.add_argument(
        "--base",
        metavar="FOLDER",
        help="for a PEFT adapter folder made elsewhere: the model it sits on, in place of the "
        "base_model_name_or_path its adapter_config.json records",
    )


def _options(args) -> dict:
    """A method's or training's options: the YAML file, then --set on top."""
    options = load_yaml(args.config) if args.config else {}
    options.update(parse_assignments(args.set, "--set"))
    return options


def add_train(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a backbone into the recommender (or Retrain)")
    p.add_argument("--data", required=True, help="folder written by `e2urec prepare`")
    p.add_argument("--model", default="tiny", help="backbone folder or hub name; 'tiny' builds one")
    _base_option(p)
    p.add_argument("--split", default="train", choices=["train", "retain"], help="retain = Retrain")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--config", help="YAML file with training options")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override options, e.g. epochs=1")
    p.set_defaults(run=run_train)


def run_train(args) -> None:
    from e2urec.api import train_recommender
    from e2urec.model.train import processes

    options = _options(args)
    report = train_recommender(args.data, args.out, args.model, args.split, options, args.base)
    if processes().is_main_process:
        print(json.dumps({k: report[k] for k in ("test", "seconds", "trainable_params")}, indent=2))


def add_unlearn(sub) -> None:
    p = sub.add_parser("unlearn", help="make a trained recommender forget the prepared forget set")
    p.add_argument("--data", required=True, help="folder written by `e2urec prepare`")
    p.add_argument("--model", required=True, help="the trained recommender's folder")
    _base_option(p)
    p.add_argument("--method", default="e2urec", help="unlearning method (default e2urec)")
    p.add_argument("--out", required=True, help="output folder (adapter or model + report)")
    p.add_argument("--config", help="YAML file with the method's options")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override options, e.g. alpha=1")
    p.set_defaults(run=run_unlearn)


def run_unlearn(args) -> None:
    from e2urec.api import unlearn

    options = _options(args)
    result = unlearn(args.data, args.model, args.out, args.method, options, args.base)
    print(json.dumps({k: result[k] for k in ("method", "model", "seconds", "forget")}, indent=2))


def add_forget(sub) -> None:
    p = sub.add_parser("forget", help="apply one deletion request (users or interactions)")
    p.add_argument("--data", required=True, help="folder written by `e2urec prepare`")
    p.add_argument("--model", required=True, help="the trained (or already unlearned) model")
    _base_option(p)
    p.add_argument("--method", default="e2urec", help="unlearning method (default e2urec)")
    p.add_argument("--users", help="comma-separated user ids: all their train samples go")
    p.add_argument("--interactions", help="CSV with columns user,item: those samples go")
    p.add_argument(
        "--keep-history",
        dest="history",
        action="store_false",
        help="keep prompts that show a deleted rating in their history (default: forget them)",
    )
    p.add_argument("--out", required=True, help="new, empty output folder (model + report)")
    p.add_argument(
        "--no-eval",
        dest="evaluate",
        action="store_false",
        help="skip comparing the models before and after (the request's latency is unchanged)",
    )
    p.add_argument("--config", help="YAML file with the method's options")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override options, e.g. alpha=1")
    p.set_defaults(run=run_forget)


def run_forget(args) -> None:
    from e2urec.api import forget
    from e2urec.data.deletion import parse_users, read_interactions

    if not args.users and not args.interactions:
        raise ValueError("give --users and/or --interactions")
    users = parse_users(args.users) if args.users else ()
    pairs = read_interactions(args.interactions) if args.interactions else ()
    options = _options(args)
    report = forget(
        args.data,
        args.model,
        args.out,
        args.method,
        users,
        pairs,
        options,
        args.history,
        args.evaluate,
        args.base,
    )
    keys = (
        "method",
        "model",
        "removed",
        "counts",
        "forget",
        "test",
        "mia_auc",
        "before",
        "seconds",
        "latency",
    )
    print(json.dumps({k: report[k] for k in keys if k in report}, indent=2))


def _preset_options(p, out: str) -> None:
    """What `bench` and `tune` share: the preset and what goes over it."""
    p.add_argument("--preset", default="demo", help="smoke, demo, study, paper, ... (default demo)")
    p.add_argument("--config", help="YAML file merged over the preset")
    p.add_argument("--methods", help="comma-separated subset of methods to run")
    p.add_argument("--out", help=f"output folder (default {out})")
    p.add_argument(
        "--set", nargs="*", metavar="KEY=VALUE", help="e.g. train.epochs=1 model=t5-small"
    )


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="prepare, train, unlearn with each method, compare")
    _preset_options(p, "runs/<preset>")
    p.add_argument("--seeds", help="comma-separated seeds: mean ± std over them")
    p.add_argument("--sequential", type=int, help="also forget the users in N successive requests")
    p.add_argument(
        "--executor", choices=("local", "ray"), help="where the jobs run (default: local processes)"
    )
    p.add_argument("--address", help="a Ray cluster's HOST:PORT (default: start a local one)")
    p.set_defaults(run=run_bench_cli)


def _bench_values(args) -> dict:
    from e2urec.bench import merge, preset

    values = preset(args.preset)
    if args.config:
        values = merge(values, load_yaml(args.config))
    values = merge(values, parse_assignments(args.set, "--set"))
    if args.methods:
        values["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.seeds:
        values["seeds"] = [s.strip() for s in args.seeds.split(",") if s.strip()]
    for name in ("sequential", "executor", "address"):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    return values


def run_bench_cli(args) -> None:
    from e2urec.bench import Bench, run_bench
    from e2urec.bench.report import sequential_table, text_table

    values = _bench_values(args)
    out = args.out or f"runs/{args.preset}"
    results = run_bench(Bench.from_dict(values, where=f"preset {args.preset}"), out)
    print(text_table(results))
    if results.get("sequential"):
        print("\n" + sequential_table(results))
    print(f"wrote {out}/results.json, results.csv, results.md, results.png")


def add_tune(sub) -> None:
    p = sub.add_parser("tune", help="choose the approximate methods' lr and epochs by one rule")
    _preset_options(p, "runs/tune-<preset>")
    p.add_argument("--grid", help="YAML file with lrs, epochs, max_valid_auc_drop")
    p.set_defaults(run=run_tune, seeds=None)


def run_tune(args) -> None:
    import yaml

    from e2urec.bench import Bench
    from e2urec.bench.tune import TuneConfig, tune

    bench = Bench.from_dict(_bench_values(args), where=f"preset {args.preset}")
    grid = from_dict(TuneConfig, load_yaml(args.grid) if args.grid else {}, "grid")
    result = tune(bench, args.out or f"runs/tune-{args.preset}", grid)
    print(yaml.safe_dump({"method_options": result["chosen"]}, sort_keys=False), end="")


def add_init(sub) -> None:
    p = sub.add_parser("init", help="create a deployment: live data, model versions, ledger")
    p.add_argument("--data", required=True, help="folder written by `e2urec prepare`")
    p.add_argument("--model", required=True, help="the trained recommender's folder")
    _base_option(p)
    p.add_argument("--out", required=True, help="new deployment folder")
    p.add_argument("--method", default="e2urec", help="unlearning method (default e2urec)")
    p.add_argument("--config", help="YAML file with the method's options (and a verify: section)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="e.g. epochs=1 verify.samples=100")
    p.add_argument(
        "--exact",
        choices=("apa",),
        help="two-phase deletions: serve an APA model trained now from the backbone; each "
        "request is carried out by --method, then exactly (its options: --set apa.shards=4)",
    )
    p.add_argument(
        "--key-file",
        dest="key_file",
        help="HMAC key for the forgotten ids (32+ bytes), kept where it is "
        "(default: a new key in ~/.config/e2urec/keys, outside the deployment)",
    )
    p.set_defaults(run=run_init)


def run_init(args) -> None:
    from e2urec.deploy import init

    options = _options(args)
    made = init(
        args.data, args.model, args.out, args.method, options, args.key_file, args.exact, args.base
    )
    print(json.dumps(made, indent=2))


def add_request(sub) -> None:
    p = sub.add_parser(
        "request", help="submit a deletion request to a deployment (prints its id); list, cancel"
    )
    p.add_argument("--deploy", required=True, help="folder made by `e2urec init`")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--users", help="comma-separated user ids: all their data goes")
    what.add_argument("--interactions", help="CSV with columns user,item: those ratings go")
    what.add_argument("--list", action="store_true", help="the requests waiting to be applied")
    what.add_argument("--cancel", metavar="ID", help="withdraw a request waiting to be applied")
    p.set_defaults(run=run_request)


def run_request(args) -> None:
    from e2urec.data.deletion import parse_users, read_interactions
    from e2urec.deploy import Busy, cancel, pending_requests, request

    if args.list:
        print(json.dumps(pending_requests(args.deploy), indent=2))
        return
    if args.cancel:
        try:
            print(json.dumps(cancel(args.deploy, args.cancel), indent=2))
        except Busy as err:
            raise ValueError(str(err)) from None
        return
    users = parse_users(args.users) if args.users else ()
    pairs = read_interactions(args.interactions) if args.interactions else ()
    print(request(args.deploy, users, pairs))


def add_apply(sub) -> None:
    p = sub.add_parser("apply", help="unlearn, verify and purge every pending request")
    p.add_argument("--deploy", required=True, help="folder made by `e2urec init`")
    p.add_argument("--method", help="unlearning method (default: the deployment's)")
    p.add_argument("--config", help="YAML file with the method's options (and a verify: section)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="e.g. alpha=1 verify.retrain=true")
    p.add_argument(
        "--phase",
        choices=("approximate", "exact"),
        help="a two-phase deployment (init --exact): run only this phase's pending steps",
    )
    p.set_defaults(run=run_apply)


def run_apply(args) -> None:
    from e2urec.deploy import Busy, apply, status

    options = _options(args) if args.config or args.set else None
    try:
        outcomes = apply(args.deploy, args.method, options, phase=args.phase)
    except Busy as err:
        raise ValueError(str(err)) from None
    except ValueError:
        raise  # refused before anything was done: its message says why
    except Exception as err:  # a full disk, a killed writer: the attempt is in the ledger
        raise ValueError(
            f"the apply failed ({type(err).__name__}: {err}); its requests stay pending, the "
            "attempt recorded, and the next apply tries again"
        ) from None
    # The head, to keep elsewhere: `ledger verify --expect-head` checks a restored ledger by it.
    print(json.dumps({"requests": outcomes, "ledger": status(args.deploy)["ledger"]}, indent=2))


def add_status(sub) -> None:
    p = sub.add_parser("status", help="requests, model versions and the live one")
    p.add_argument("--deploy", required=True, help="folder made by `e2urec init`")
    p.add_argument("id", nargs="?", help="one request's id")
    p.set_defaults(run=run_status)


def run_status(args) -> None:
    from e2urec.deploy import status

    print(json.dumps(status(args.deploy, args.id), indent=2))


def add_ledger(sub) -> None:
    p = sub.add_parser("ledger", help="check the deployment's ledger")
    actions = p.add_subparsers(dest="action", required=True)
    v = actions.add_parser("verify", help="check the hash chain and re-hash the model versions")
    v.add_argument("--deploy", required=True, help="folder made by `e2urec init`")
    v.add_argument(
        "--expect-head",
        dest="expect_head",
        metavar="HASH",
        help="a ledger head kept elsewhere (`apply` and `status` print it): it must be a row of "
        "this ledger, so an older copy restored with LIVE and the data is caught",
    )
    v.set_defaults(run=run_ledger_verify)


def run_ledger_verify(args) -> None:
    from e2urec.deploy.integrity import verify

    result = verify(args.deploy, args.expect_head)
    print(json.dumps(result, indent=2))
    if not result["ok"]:
        raise ValueError(f"the ledger check found {len(result['problems'])} problem(s)")


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="HTTP service: score, take deletion requests, status page")
    p.add_argument("--deploy", required=True, help="deployment folder (from `e2urec init`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument(
        "--token-file",
        dest="token_file",
        help="file holding the bearer token (default: made on the first start beside the "
        "deployment's HMAC key, outside the folder)",
    )
    p.add_argument(
        "--open-score",
        dest="open_score",
        action="store_true",
        help="let /v1/score answer without the token (deletions and admin routes always need it)",
    )
    p.add_argument(
        "--window", type=float, help="seconds a request waits for others to join (default 30)"
    )
    p.add_argument("--method", help="unlearning method for applies (default: the deployment's)")
    p.add_argument(
        "--allow-host",
        dest="allow_hosts",
        action="append",
        metavar="NAME",
        help="a Host header name to answer besides the bound address and localhost "
        "(a proxy's name in front of the service); repeatable",
    )
    p.add_argument(
        "--max-attempts",
        dest="max_attempts",
        type=int,
        help="failed applies of a request before the worker leaves it to the operator (3)",
    )
    p.add_argument(
        "--apply-timeout",
        dest="apply_timeout",
        type=float,
        metavar="SECONDS",
        help="an apply running longer is killed and counted as a failed attempt (14400)",
    )
    p.set_defaults(run=run_serve)


def run_serve(args) -> None:
    from e2urec.service.app import serve

    names = ("window", "method", "max_attempts", "apply_timeout")
    options = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.allow_hosts:
        options["allow_hosts"] = tuple(args.allow_hosts)
    serve(args.deploy, args.host, args.port, args.token_file, open_score=args.open_score, **options)


COMMANDS = [add_prepare, add_train, add_unlearn, add_forget, add_bench, add_tune]
COMMANDS += [add_init, add_request, add_apply, add_status, add_ledger, add_serve]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """`argv`: the arguments to be parsed, when known: prepare's protocol flags are only built
    where they can be given (None: always)."""
    parser = argparse.ArgumentParser(prog="e2urec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        if add is add_prepare:
            add(sub, protocol_flags=argv is None or "prepare" in argv)
        else:
            add(sub)
    return parser


def _quiet_libraries() -> None:
    """Keep the terminal for our own progress bars: the libraries' loading bars and peft's
    deprecation notice repeat for every model loaded and tell the user nothing they can act on.
    The variable is read when huggingface_hub is first imported, so this costs commands that load
    no model nothing; a user who sets it keeps their choice."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )


# Commands that train in this process keep the memory a step frees (`bench` does so itself).
# Not `serve`: a long-lived process would hold it between requests.
TRAINING = ("train", "unlearn", "forget", "apply", "tune")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    _quiet_libraries()
    if args.command != "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Each process would run the whole command and write the same files.
        print(
            f"e2urec {args.command}: error: runs in one process; under `accelerate launch` with"
            " several processes only `e2urec train` shares its work",
            file=sys.stderr,
        )
        return 2
    if args.command in TRAINING:
        from e2urec.memory import keep_freed_memory

        keep_freed_memory()
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
        print(f"e2urec {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
