"""The errors a user's input can cause: every script reports them as one line, never as a traceback."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console

from agents import PlannerError
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
)
USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130  # what a shell reports for a process ended by Ctrl-C


def reporting_user_errors(work: Callable[[], int], console: Console) -> int:
    """``work()``'s exit code, or a one-line ``error: ...`` and exit code 2 if the user's input was bad,
    or a line saying so and 130 on Ctrl-C (workers and namespaces are released as the stack unwinds;
    the results of the interrupted run are not written)."""
    try:
        return work()
    except USER_ERRORS as exc:
        console.print(f"[red]error:[/] {exc}")
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: stopped and cleaned up; this run's results were not written")
        return INTERRUPTED_EXIT
