"""`vgpo-fast` command line: one subcommand per job; errors are one clear line, not a traceback."""

from __future__ import annotations

import argparse
import sys


def _backends(_args: argparse.Namespace) -> int:
    import torch

    from .ops import _backend

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        print(f"{device}: available {_backend.available_backends(device)}")
    for name, reason in (("cpu", _backend.cpu_extension_error()), ("triton", _backend.triton_error())):
        if reason:
            print(f"{name}: {reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vgpo-fast", description="VGPO / Flow-GRPO training runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("backends", help="which op backends run here, and why the others do not").set_defaults(
        run=_backends)
    sub.add_parser("reward-server", help="serve a reward over HTTP (see `vgpo-fast reward-server --help`)",
                   add_help=False).set_defaults(run=None)
    args, rest = parser.parse_known_args(argv)
    if args.command == "reward-server":
        from .rewards.server import main as reward_server_main

        return reward_server_main(rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    try:
        return args.run(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"vgpo-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
