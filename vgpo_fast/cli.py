"""`vgpo-fast` command line: one subcommand per job; errors are one clear line, not a traceback.

Building the parser imports nothing heavy (torch, diffusers, peft, ...), so that `vgpo-fast ... --help` answers
at once: each handler imports what its command needs (tests/test_cli.py checks this).
"""

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


def _pretrain(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from .tasks.pretrain import pretrain
    from .tasks.pretrain_config import PretrainConfig

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    kwargs = {f.name: getattr(args, f.name) for f in fields(PretrainConfig) if getattr(args, f.name, None) is not None}
    pretrain(PretrainConfig(**kwargs), out=args.out)
    return 0


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    from .tasks.pretrain_config import PretrainConfig  # the defaults, without importing torch (tasks.pretrain does)

    p = sub.add_parser("pretrain", help="flow-matching pretraining of a built-in task's tiny base model (CPU)")
    p.add_argument("--task", default="shapes", help="shapes | text")
    p.add_argument("--out", default=None, help="model directory (default: the task's shipped base_model/)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--init", default=None, help="continue from this task model directory (default: from scratch)")
    defaults = PretrainConfig()
    for name in ("steps", "batch_size", "lr", "warmup", "seed", "caption_noise", "eval_prompts", "eval_seeds"):
        value = getattr(defaults, name)
        p.add_argument(
            f"--{name.replace('_', '-')}", dest=name, type=type(value), default=None, help=f"default {value}"
        )
    p.set_defaults(handler=_pretrain)


def _load_train_config(args: argparse.Namespace):
    from .train.config import load

    return load(args.config, args.overrides)


def _train(args: argparse.Namespace) -> int:
    from . import distributed
    from .train.run import train

    cfg = _load_train_config(args)  # a config error is reported once, before any process is started
    if args.nproc is not None and not distributed.under_launcher():
        distributed.launch(
            args.nproc,
            [
                *(["--config", args.config] if args.config else []),
                *(["--resume"] if args.resume else []),
                *args.overrides,
            ],
        )
    train(cfg, resume=args.resume)
    distributed.shutdown()
    return 0


def _trainer_from_run(args: argparse.Namespace):
    """A Trainer with the weights of a run's latest checkpoint (or the base model with --base)."""
    from pathlib import Path

    from .train.checkpoint import latest_checkpoint, load_checkpoint
    from .train.config import load
    from .train.run import load_weights
    from .train.trainer import Trainer

    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run / 'config.yaml'} does not exist: --run must be a training run directory")
    cfg = load(run / "config.yaml", args.overrides)
    trainer = Trainer(cfg, log=lambda *_: None)
    if not args.base:
        path = latest_checkpoint(run)
        if path is None:
            raise FileNotFoundError(f"no checkpoint in {run / 'checkpoints'}")
        load_weights(trainer, load_checkpoint(path))
    return trainer


def _sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .train.report import save_image_grid

    trainer = _trainer_from_run(args)
    prompts = list(args.prompt) if args.prompt else list(dict.fromkeys(trainer.eval_set()[0]))[: args.n]
    prompts = [p for p in prompts for _ in range(args.seeds)]
    seeds = [args.seed + i % args.seeds for i in range(len(prompts))]
    images = trainer.sample(prompts, seeds)
    out = Path(args.out)
    save_image_grid(images, out, nrow=args.seeds * max(1, min(4, len(prompts) // args.seeds)), scale=args.scale)
    (out.with_suffix(".txt")).write_text("\n".join(f"{s}\t{p}" for p, s in zip(prompts, seeds, strict=True)) + "\n")
    print(f"wrote {out} ({len(prompts)} images; prompts and seeds in {out.with_suffix('.txt')})")
    trainer.close()
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    trainer = _trainer_from_run(args)
    if args.prompts:
        trainer.cfg.run.eval_prompts = args.prompts
    if args.seeds:
        trainer.cfg.run.eval_seeds = args.seeds
    scores, _ = trainer.evaluate()
    print(
        json.dumps(
            {
                "run": args.run,
                "weights": "base" if args.base else "latest checkpoint",
                **scores,
                "eval_prompts": trainer.cfg.run.eval_prompts,
                "eval_seeds": trainer.cfg.run.eval_seeds,
            }
        )
    )
    trainer.close()
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train with VGPO or Flow-GRPO (no arguments: the CPU default on shapes)")
    p.add_argument("--config", default=None, help="YAML config (default: the built-in CPU default)")
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="train on N processes of this node (starts torchrun; NCCL on GPUs, gloo on CPUs); for "
        "several nodes run torchrun yourself (docs/distributed.md)",
    )
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. algorithm.name=flow_grpo")
    p.set_defaults(handler=_train)
    for name, fn, helptext in (
        ("sample", _sample, "PNG grid of samples from a run's latest checkpoint"),
        ("eval", _eval, "held-out reward of a run's latest checkpoint"),
    ):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("--run", required=True, help="the run directory (runs/<name>)")
        q.add_argument("--base", action="store_true", help="use the base model instead of the checkpoint")
        q.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
        if name == "sample":
            q.add_argument("--prompt", action="append", help="a prompt (repeatable); default: held-out prompts")
            q.add_argument("--n", type=int, default=8, help="number of held-out prompts when --prompt is absent")
            q.add_argument("--seeds", type=int, default=4, help="images per prompt")
            q.add_argument("--seed", type=int, default=0, help="first noise seed")
            q.add_argument("--scale", type=int, default=4, help="pixel upscale factor of the grid")
            q.add_argument("--out", default="samples.png")
        else:
            q.add_argument("--prompts", type=int, default=None, help="held-out prompts (default: the run's)")
            q.add_argument("--seeds", type=int, default=None, help="seeds per prompt (default: the run's)")
        q.set_defaults(handler=fn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vgpo-fast", description="VGPO / Flow-GRPO training runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("backends", help="which op backends run here, and why the others do not").set_defaults(
        handler=_backends
    )
    _add_train(sub)
    _add_pretrain(sub)
    from .profiling.cli import add_profile_parser

    add_profile_parser(sub)
    from .experiments.cli import add_experiment_parser

    add_experiment_parser(sub)
    sub.add_parser(
        "reward-server", help="serve a reward over HTTP (see `vgpo-fast reward-server --help`)", add_help=False
    ).set_defaults(handler=None)
    args, rest = parser.parse_known_args(argv)
    if args.command == "reward-server":
        import vgpo_fast.tasks.registry  # noqa: F401  (registers the task rewards (shapes) with the reward registry)

        from .rewards.server import main as reward_server_main

        return reward_server_main(rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"vgpo-fast {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"vgpo-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
