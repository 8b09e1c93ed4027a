"""`resv`: one command, one module per subcommand.

Each subcommand module exposes `add_arguments(parser)` and `run(args) -> int`.
Modules are imported only when their command runs, so `resv migrate` does not
pay for importing the HTTP stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("resv.commands.demo", "start everything on embedded servers and print how to use it"),
    "serve": ("resv.api.serve", "serve the HTTP API"),
    "archiver": ("resv.archiver.run", "drain the decision streams into PostgreSQL"),
    "notifier": ("resv.notifier.run", "deliver signed webhooks from the audit"),
    "listen": ("resv.commands.listen", "receive webhooks locally: verify each, print one JSON line per event"),
    "migrate": ("resv.archiver.migrate", "apply the SQL migrations"),
    "timeline": ("resv.commands.timeline", "print a resource's complete ordered history"),
    "verify": ("resv.commands.verify", "replay the audit through the Lua and compare every decision"),
    "restore": ("resv.commands.restore", "rebuild the engine state in an empty Redis from the audit"),
    "start-over": ("resv.commands.start_over", "after a Redis data loss: start a new deployment instead of restoring"),
    "partitions": ("resv.commands.partitions", "print the cluster slot each partition takes, and the share of each shard"),
    "keys": ("resv.commands.keys", "print the keys a resource's calls take (for redis-cli FCALL)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        usage = "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items())
        print(f"usage: resv COMMAND [options]\n\ncommands:\n{usage}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module_name, help_ = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"resv {argv[0]}", description=help_)
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(argv[1:])) or 0)


if __name__ == "__main__":
    sys.exit(main())
