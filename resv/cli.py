"""`resv`: one command, one module per subcommand.

Each subcommand module exposes `add_arguments(parser)` and `run(args) -> int`.
Modules are imported only when their command runs, so `resv migrate` does not
pay for importing the HTTP stack.
"""

from __future__ import annotations

import argparse
import importlib
import logging
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

DAEMONS = frozenset({"serve", "archiver", "demo"})
"""Commands that keep running and log (their log reports what fails)."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        usage = "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"resv: unknown command {argv[0]!r}", file=sys.stderr)
        print(f"usage: resv COMMAND [options]\n\ncommands:\n{usage}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module_name, help_ = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"resv {argv[0]}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    if argv[0] not in DAEMONS:
        # the pool's own warning per failed connection attempt would repeat what the one line says
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not is_operational(exc):
            raise  # a bug: the traceback is what a report needs
        print(f"resv {argv[0]}: {one_line(exc)}", file=sys.stderr)
        return 1


def is_operational(exc: BaseException) -> bool:
    """A server that cannot be reached or refuses, or a malformed setting:
    the operator's to fix, told in one line rather than a traceback."""
    if isinstance(exc, (OSError, ValueError, TimeoutError)):  # ConnectionError is an OSError
        return True
    for module, names in _OPERATIONAL.items():
        kinds = sys.modules.get(module)
        if kinds is not None and isinstance(exc, tuple(getattr(kinds, n) for n in names)):
            return True
    return False


# Only looked up when already imported: `resv keys` imports neither driver.
_OPERATIONAL = {
    "redis.exceptions": ("RedisError",),
    "psycopg": ("OperationalError", "InterfaceError"),
    "psycopg_pool": ("PoolTimeout",),
    "resv.engine.errors": ("EngineError",),
}


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


if __name__ == "__main__":
    sys.exit(main())
