"""`e2urec` command line: each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import json
import sys

from e2urec.config import from_dict, load_yaml


def _protocol(args):
    from e2urec.data.protocol import Protocol

    values = load_yaml(args.config) if getattr(args, "config", None) else {}
    values = values.get("protocol", values)
    for key in ("history", "min_history", "last", "forget_ratio", "seed", "threshold"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    return from_dict(Protocol, values, "protocol")


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="raw data -> prompts -> train/valid/test/retain/forget")
    p.add_argument("--dataset", default="movielens", help="data set name (default: movielens)")
    p.add_argument("--raw", help="raw file or folder (the default data set needs none)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="YAML file with protocol options")
    p.add_argument("--history", type=int, help="items shown in the prompt (K, default 10)")
    p.add_argument("--min-history", dest="min_history", type=int, help="default 5")
    p.add_argument("--last", type=int, help="keep the most recent N samples (default 100000)")
    p.add_argument("--forget-ratio", dest="forget_ratio", type=float, help="default 0.2")
    p.add_argument("--seed", type=int, help="seed choosing forgotten users (default 42)")
    p.add_argument("--threshold", type=float, help='rating > threshold is "Yes." (default 3)')
    p.set_defaults(run=run_prepare)


def run_prepare(args) -> None:
    from e2urec.data import prepare

    manifest = prepare(args.out, dataset=args.dataset, raw=args.raw, protocol=_protocol(args))
    print(json.dumps({k: manifest[k] for k in ("dataset", "counts", "users")}, indent=2))
    print(f"wrote {args.out}")


COMMANDS = [add_prepare]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e2urec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"e2urec {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
