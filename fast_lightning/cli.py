"""Command-line dispatcher: ``python -m fast_lightning <command> [key=value ...]``.

User mistakes (fast_lightning.errors.UserError and its ConfigError/DataError subclasses, and a few library
errors listed in ``_user_errors``) print one line; anything else, a plain ValueError included, is a bug and
keeps its traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from fast_lightning.commands import COMMANDS
from fast_lightning.errors import UserError


HELP_FLAGS = ("-h", "--help", "help", "help=true", "help=1")


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    rows = "\n".join(f"  {name:<{width}}  {doc}" for name, (_, doc) in COMMANDS.items())
    return (f"usage: fast-lightning <command> [key=value ...]   (or python -m fast_lightning)\n\ncommands:\n{rows}\n\n"
            "fast-lightning <command> --help lists its options and config keys with defaults\n")


def _user_errors() -> tuple[type[BaseException], ...]:
    from omegaconf.errors import OmegaConfBaseException

    from fast_lightning.data.demo_dataset import DemoDatasetError

    # ConfigError, DataError, CheckpointError and PretrainedFolderError are UserErrors
    return (UserError, DemoDatasetError, OmegaConfBaseException, FileNotFoundError)


class _NoAdverts(logging.Filter):
    """Drops Lightning's "Tip: try installing ..." product adverts; keeps every real notice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless" not in str(record.msg)


def quiet_lightning_logging() -> None:
    """Each Lightning notice once, through our handler: Lightning adds its own "INFO: ..." handler to the
    ``lightning`` logger and still propagates to the root one, so every line was printed twice."""
    import lightning  # noqa: F401  (installs its handler on import; removed right after)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
        lg = logging.getLogger(name)
        for handler in list(lg.handlers):
            lg.removeHandler(handler)
        lg.propagate = True
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _NoAdverts) for f in handler.filters):
            handler.addFilter(_NoAdverts())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if any(a in HELP_FLAGS for a in args):
        from fast_lightning.help import command_help

        print(command_help(command, *COMMANDS[command]), end="")
        return 0
    args = ["print_config=true" if a in ("--print-config", "--print_config") else a for a in args]
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "INFO"), format="%(message)s")
    from fast_lightning.hardware import configure_threads

    configure_threads()
    quiet_lightning_logging()
    from fast_lightning.training import expected_warnings_silenced

    module = importlib.import_module(COMMANDS[command][0])
    try:
        with expected_warnings_silenced():
            return int(module.main(args) or 0)
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # print_config=true: the config was printed, nothing else runs
        return int(exc.code or 0)
    except KeyboardInterrupt as exc:
        print(str(exc) or "interrupted: completed work is kept; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        from fast_lightning.runs import release_all_run_dirs

        release_all_run_dirs()  # run-folder locks end with the command (in-process callers included)
        end_process_group()


def end_process_group() -> None:
    """Close a DDP process group the command left open: gloo's threads still running at interpreter exit can
    abort a finished run ("terminate called without an active exception", exit code -6)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
