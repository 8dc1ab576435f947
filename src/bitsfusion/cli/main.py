"""The ``bitsfusion`` command line: ``quantize``, ``inspect``, ``eval``, ``demo``, ``analyze``, ``allocate``, ``pareto``,
``distill``.

Each command lives in its own module and is a few lines over the public API. This module
only assembles them and sets the error contract every command follows:

- a ``BitsFusionError`` (bad model name, bad plan, corrupt artifact, ...) prints as one red
  line on stderr, ``error: <message>``, and exits with code 2, never with a traceback;
- an ``OSError`` (permissions, disk full) prints the same way and exits with code 1;
- bad arguments (unknown option, ``--bits 9``) are rejected by typer before anything runs,
  also with exit code 2.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import BitsFusionError
from .allocate import allocate_command
from .analyze import analyze_command
from .demo import demo_command
from .distill import distill_command
from .evaluate import eval_command
from .inspect import inspect_command
from .pareto import pareto_command
from .quantize import quantize_command

__all__ = ["app", "EXIT_USER_ERROR"]

EXIT_USER_ERROR = 2
EXIT_OS_ERROR = 1

app = typer.Typer(
    name="bitsfusion",
    help="Mixed-precision low-bit quantization of PyTorch models, packed as bit-planes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int) -> None:
    one_line = " ".join(message.split())
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(one_line)}", highlight=False)
    raise typer.Exit(code=code)


def _guarded(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with our errors turned into one line and an exit code (signature kept for typer)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except BitsFusionError as e:
            _fail(str(e), EXIT_USER_ERROR)
        except OSError as e:
            _fail(f"{type(e).__name__}: {e}", EXIT_OS_ERROR)

    return run


app.command("quantize")(_guarded(quantize_command))
app.command("inspect")(_guarded(inspect_command))
app.command("eval")(_guarded(eval_command))
app.command("demo")(_guarded(demo_command))
app.command("analyze")(_guarded(analyze_command))
app.command("allocate")(_guarded(allocate_command))
app.command("pareto")(_guarded(pareto_command))
app.command("distill")(_guarded(distill_command))
