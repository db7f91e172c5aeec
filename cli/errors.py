"""The errors a user's input can cause: every script reports them as one line, never as a traceback."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from rich.console import Console

from agents import PlannerError
from agents.ppo import PolicyFileError
from agents.staged_policy import StagedPolicyError
from cli.output import OutputError
from cli.scenarios import ScenarioError
from env.profiles import ProfileError
from env.snapshot import NetworkError
from env.traces import TraceError
from runtime.cluster import ClusterError
from runtime.models import ModelError
from runtime.plan import PlanError
from runtime.spec import SpecError
from serving.streams import StreamsFileError

USER_ERRORS: tuple[type[Exception], ...] = (
    SpecError,
    PlanError,
    PlannerError,
    NetworkError,
    TraceError,
    ModelError,
    ClusterError,
    ProfileError,
    StreamsFileError,
    ScenarioError,
    PolicyFileError,
    StagedPolicyError,
    OutputError,
)
USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130  # what a shell reports for a process ended by Ctrl-C


def reporting_user_errors(work: Callable[[], int], console: Console, kept: str | None = None) -> int:
    """``work()``'s exit code, or a one-line ``error: ...`` and exit code 2 if the user's input was bad,
    or a line saying so and 130 on Ctrl-C or SIGTERM (what ``timeout`` sends): workers, namespaces and
    temporary folders are released as the stack unwinds. ``kept`` says what the script saved as it went
    (a script that reports an interrupted run's finished work itself returns 130 from ``work``)."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        return work()
    except USER_ERRORS as exc:
        console.print(f"[red]error:[/] {exc}")
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        kept = kept or "this run's results were not written"
        console.print(f"[yellow]interrupted[/]: stopped and cleaned up; {kept}")
        return INTERRUPTED_EXIT
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C, so that it unwinds the stack (and every ``with``) instead of killing outright."""
    raise KeyboardInterrupt
