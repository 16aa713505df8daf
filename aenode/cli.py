"""The ``aenode`` command line.

Each stage of the node contributes its own subcommands through a ``register(subparsers)``
function in its package, so this file stays a table of contents.  Handlers return an
exit code: 0 success, 1 the operation failed, 2 the request was wrong (bad arguments or
configuration).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from aenode import __version__
from aenode.config import Config, ConfigError, load_config, render_toml
from aenode.logs import configure_logging

# Stage packages that add subcommands; listed here so a new stage is one line.
COMMAND_MODULES: tuple[str, ...] = (
    "aenode.phantom.cli",   # phantom
    "aenode.receive.cli",   # serve, status
    "aenode.infer.cli",     # predict
    "aenode.deliver.cli",   # retry, echo
    "aenode.web.cli",       # web hash-password, web new-token
    "aenode.demo",          # demo
)


def load_config_or_report(path: str | None) -> Config | None:
    """The configuration for a subcommand, or None after printing what is wrong with it.

    Every subcommand that takes ``--config`` uses this, so operators see one format.
    """
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"configuration error in {exc.source}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _config_check(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.file)
    if config is None:
        return 2
    print(f"# effective configuration ({args.file or 'built-in defaults'}); valid")
    print(render_toml(config), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aenode",
        description="PACS-integrated DICOM AI node for chest CT (decision support, not for diagnosis).",
    )
    parser.add_argument("--version", action="version", version=f"aenode {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config = sub.add_parser("config", help="inspect the configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="validate a TOML file and print the effective configuration")
    check.add_argument("file", nargs="?", help="TOML file (default: $AENODE_CONFIG, else built-in defaults)")
    check.set_defaults(func=_config_check)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that stage is not built into this installation
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
