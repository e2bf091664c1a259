"""Replay matching: the cursor over a run's recorded history that every command the code issues
is matched against, and the :class:`~aion.errors.NondeterminismError` a mismatch raises.

:class:`Matcher` is the base of the driver: replaying, a command must match the next recorded
event (the engine's BLOCKED/unblocked markers passed over); live, it is queued for the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from aion import events as ev
from aion._codec import encode
from aion.errors import NondeterminismError

from ._commands import Command, describe_command, describe_event, matches

if TYPE_CHECKING:
    from ._definition import WorkflowDefinition
    from ._state import WorkflowInfo

__all__ = ["MARKERS", "Diverged", "Matcher", "unchecked"]

#: The types of the engine's markers in a history: the code issued nothing there. (Event types
#: are never subclassed: a test of ``type(event)`` is exact and O(1).)
MARKERS = frozenset({ev.WorkflowBlocked, ev.WorkflowUnblocked})


class Diverged(BaseException):
    """Unwinds workflow code after a divergence; ``except Exception`` cannot swallow it."""


class Matcher:
    """The run's identity, its history cursor and the commands it issued live.

    Args:
        definition: the workflow the run runs.
    """

    # Slots in the three classes of the driver (Matcher, Operations, Driver): its attributes
    # are read on every replayed event, and more than 30 of them in a __dict__ would make
    # each read a hash lookup.
    __slots__ = (
        "__weakref__",
        "_fatal",
        "_history",
        "_new",
        "_pos",
        "definition",
        "info",
        "outcome",
        "position",
    )

    def __init__(self, definition: WorkflowDefinition) -> None:
        self.definition = definition
        self.info: WorkflowInfo | None = None
        self.outcome: Command | None = None
        self.position = 0  # the seq of the event fed last
        self._history: Sequence[ev.Event] = ()
        self._pos = 0
        self._new: list[Command] = []
        self._fatal: NondeterminismError | None = None

    @property
    def replaying(self) -> bool:
        """True while recorded history is being replayed."""
        return self._pos < len(self._history)

    def take_commands(self) -> list[Command]:
        """Commands issued live since the last call, in issue order."""
        commands, self._new = self._new, []
        return commands

    def _issue(self, command: Command) -> ev.Event | None:
        """Issue ``command``: replaying, match it and return the recorded event; live, queue it
        for the engine and return None. (The driver records an outcome command as the run's
        ``outcome`` once it is issued.)"""
        history, pos = self._history, self._pos
        while pos < len(history) and type(history[pos]) in MARKERS:
            pos += 1  # (what _skip_markers does, on the path of every command)
        self._pos = pos
        if pos < len(history):
            event = history[pos]
            if not matches(command, event):  # (only a command's event matches a command)
                self._diverge(event, command)
            self._pos = pos + 1
            return event
        self._new.append(command)
        return None

    def _skip_markers(self) -> None:
        """Pass over the engine's markers (parked BLOCKED, unblocked): the code issued nothing
        there. A run parked while its code was at a point (say, awaiting something that is not
        an aion operation) resumes there after the fix, and its next command comes after them."""
        history = self._history
        while self._pos < len(history) and type(history[self._pos]) in MARKERS:
            self._pos += 1

    def _recorded_next(self) -> ev.Event | None:
        """Replaying, the event the next command must match (markers passed over, not
        consumed); live, None."""
        history, pos = self._history, self._pos
        while pos < len(history) and type(history[pos]) in MARKERS:
            pos += 1
        return history[pos] if pos < len(history) else None

    def _diverge(
        self,
        event: ev.Event | None,
        command: Command | None,
        *,
        recorded: str = "",
        now: str = "",
        detail: str = "",
    ) -> NoReturn:
        """Keep why the run diverged at ``event`` (None: past the end of its history), where
        the code issued ``command`` (None: nothing), and unwind the code.

        ``recorded`` and ``now`` say what history has and what the code does, when describing
        the event and the command would not; ``detail`` a sentence that says both better.
        """
        workflow_id, workflow_type = self._identity()
        self._fatal = NondeterminismError(
            workflow_id,
            event.seq if event is not None else self.position + 1,
            recorded or describe_event(event),
            now or ("does " if command is None else "calls ") + describe_command(command),
            detail=detail,
            workflow_type=workflow_type,
        )
        raise Diverged()

    def _identity(self) -> tuple[str, str]:
        """(workflow id, workflow type) of the run, for error messages; the id is "" until the
        history has started the run."""
        if self.info is None:
            return "", self.definition.name
        return self.info.workflow_id, self.info.workflow_type


def unchecked(recorded: bytes, args: tuple[Any, ...]) -> bool:
    """Whether ``recorded`` is ``args`` encoded as-is, the way versions that did not check
    arguments against the annotations recorded a child's or a successor's input. Such a
    call stands on replay; one whose PayloadError the code caught (and recorded something
    else after) does not."""
    try:
        return encode(list(args)) == recorded
    except (TypeError, ValueError, OverflowError):
        return False
