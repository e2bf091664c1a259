"""Workflow definitions: the ``@aion.workflow`` decorator and how inputs are typed."""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import msgspec

from aion import _validate
from aion._codec import What, decode_payload, encode_payload
from aion.errors import InvalidArgument, PayloadError

__all__ = [
    "RetryPolicy",
    "WorkflowDefinition",
    "definition_of",
    "workflow",
]

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])

_ATTR = "__aion_workflow__"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failing step is retried. Retry waits are durable timers.

    Attributes:
        max_attempts: attempts in all, the first included (1 = never retry).
        initial_interval: seconds (or a timedelta) before the second attempt.
        backoff: factor by which the interval grows after each attempt (finite, >= 1).
        max_interval: the interval never exceeds this many seconds (``math.inf``: no cap but
            the engine's, 100 years).
        non_retryable: exception types that fail the step at once.

    Raises:
        InvalidArgument: (when built) a value the engine could not compute a wait from: NaN,
            a negative or infinite interval, a backoff below 1 or infinite, attempts below 1,
            or ``non_retryable`` that is not exception classes.
    """

    max_attempts: int = 3
    initial_interval: float = 1.0
    backoff: float = 2.0
    max_interval: float = 60.0
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        # Checked here, not when a step fails: a policy the engine cannot compute a wait from
        # would fail inside the engine, after the step's side effect, on every restart.
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise InvalidArgument(
                f"RetryPolicy(max_attempts={_validate.shown(attempts)}): attempts are an int >= 1"
            )
        initial = _validate.seconds(
            self.initial_interval, "RetryPolicy's initial_interval", limit=math.inf
        )
        object.__setattr__(self, "initial_interval", initial)
        cap = self.max_interval
        if not (isinstance(cap, float) and cap == math.inf):  # inf: no cap
            cap = _validate.seconds(cap, "RetryPolicy's max_interval", limit=math.inf)
        object.__setattr__(self, "max_interval", cap)
        backoff = self.backoff
        if (
            isinstance(backoff, bool)
            or not isinstance(backoff, int | float)
            or not 1 <= backoff < math.inf  # False for NaN
        ):
            raise InvalidArgument(_bad_backoff(backoff))
        try:
            object.__setattr__(self, "backoff", float(backoff))
        except OverflowError:  # an int beyond any float
            raise InvalidArgument(_bad_backoff(backoff)) from None
        kinds: object = self.non_retryable
        if isinstance(kinds, type):
            kinds = (kinds,)
        if not isinstance(kinds, tuple | list | set | frozenset) or not all(
            isinstance(k, type) and issubclass(k, BaseException) for k in kinds
        ):
            raise InvalidArgument(
                f"RetryPolicy(non_retryable={_validate.shown(self.non_retryable)}): pass a "
                "tuple of exception classes"
            )
        object.__setattr__(self, "non_retryable", tuple(kinds))

    def interval(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        cap = min(self.max_interval, _validate.MAX_SECONDS)  # a timer must stay a datetime
        try:
            grown = self.initial_interval * self.backoff ** (attempt - 1)
        except OverflowError:  # the growth passed any float: the cap applies
            return float(cap)
        return float(min(grown, cap))

    def retryable(self, error: BaseException) -> bool:
        """Whether ``error`` may be retried at all under this policy."""
        return not isinstance(error, self.non_retryable) and not isinstance(error, PayloadError)


def _bad_backoff(backoff: object) -> str:
    return f"RetryPolicy(backoff={_validate.shown(backoff)}): the factor is a finite number >= 1"


DEFAULT_RETRY = RetryPolicy()


#: Types whose values need no conversion when ``type(value) is`` the annotation.
_EXACT = frozenset({int, float, str, bytes, bool})


@dataclass(frozen=True, slots=True)
class WorkflowDefinition:
    """A registered workflow: its stable type name and its function."""

    name: str
    fn: Callable[..., Coroutine[Any, Any, Any]]
    param_types: tuple[Any, ...] = field(default=(), compare=False)
    min_args: int = field(default=0, compare=False)
    max_args: int | None = field(default=None, compare=False)
    param_names: tuple[str, ...] = field(default=(), compare=False)
    #: (position, annotation) of the parameters whose arguments are converted: none for a
    #: workflow whose parameters are all unannotated or ``Any``, which skips conversion.
    typed: tuple[tuple[int, Any], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        typed = tuple(
            (i, tp)
            for i, tp in enumerate(self.param_types)
            if tp is not Any and tp is not object and tp is not inspect.Parameter.empty
        )
        object.__setattr__(self, "typed", typed)

    def encode_input(self, args: Sequence[Any], *, limit: int) -> bytes:
        """Check workflow arguments against the parameter annotations and encode them.

        Called before anything is recorded (``start``, ``ctx.child``, ``ctx.continue_as_new``).
        Each annotated argument is converted with msgspec's strict rules (no parsing of
        strings into numbers, no rounding; an int for a float, a dict for a Struct or a
        dataclass, an ISO string for a datetime are fine) and the converted value is recorded,
        so the run receives it as annotated.

        Raises:
            InvalidArgument: the number of arguments does not fit the signature.
            PayloadError: an argument does not match its annotation, cannot be encoded, or the
                encoding is larger than ``limit``.
        """
        self.check_arity(args)
        values = list(args)
        what = self._what_input
        if not self.typed:  # an untyped workflow converts nothing
            return encode_payload(values, limit=limit, what=what)
        checked: list[tuple[int, Any]] = []
        for i, tp in self.typed:
            if i >= len(values):
                break  # the rest take their defaults
            value = values[i]
            if type(value) is tp and tp in _EXACT:
                continue
            values[i] = self._check(i, value, tp)
            checked.append((i, tp))
        data = encode_payload(values, limit=limit, what=what)
        if checked:
            # Structs and dataclasses are not validated when they are built, so their fields
            # were not checked above: check what the run will decode.
            recorded = decode_payload(data)
            for i, tp in checked:
                self._check(i, recorded[i], tp)
        return data

    def _check(self, i: int, value: Any, tp: Any) -> Any:
        try:
            return msgspec.convert(value, tp, strict=True)
        except (ValueError, OverflowError) as exc:  # msgspec.ValidationError is a ValueError
            given = _validate.shown(value)
            raise PayloadError(
                f"{self._argument(i)} must be {_type_name(tp)}, not {type(value).__name__} "
                f"({given}): {exc}. Convert it before the call: arguments are checked against "
                "the annotations strictly (no parsing of strings into numbers, no rounding)."
            ) from exc
        except TypeError as exc:  # an annotation msgspec cannot convert to
            raise PayloadError(
                f"{self._argument(i)} is annotated {_type_name(tp)}, which msgspec cannot "
                f"convert to ({exc}). Annotate it with a type msgspec supports, or Any."
            ) from exc

    def _what_input(self) -> str:
        return f"input of workflow {self.name!r}"

    def _argument(self, i: int) -> str:
        name = f" ({self.param_names[i]!r})" if i < len(self.param_names) else ""
        return f"argument {i + 1}{name} of workflow {self.name!r}"

    def check_arity(self, args: Sequence[Any]) -> None:
        """Refuse a wrong number of arguments at the call site, not inside the run."""
        if len(args) < self.min_args or (self.max_args is not None and len(args) > self.max_args):
            most = "any number" if self.max_args is None else str(self.max_args)
            raise InvalidArgument(
                f"workflow {self.name!r} takes {self.min_args} to {most} argument(s) after "
                f"ctx, got {len(args)}"
            )

    def decode_input(self, data: bytes) -> list[Any]:
        """Decode recorded input into the types of the function's parameters.

        Lenient (msgspec's non-strict conversion), unlike :meth:`encode_input`: inputs that
        earlier versions recorded without checking them still decode as they did.
        """
        values = decode_payload(data, what=self._what_input)
        if not isinstance(values, list):
            raise PayloadError(f"input of workflow {self.name!r} is not an argument list")
        for i, tp in self.typed:  # nothing to do for an untyped workflow
            if i >= len(values):
                break
            value = values[i]
            if type(value) is not tp or tp not in _EXACT:
                values[i] = convert(value, tp, what=self._argument(i))
        return values


def convert(value: Any, tp: Any, *, what: What) -> Any:
    """Convert a decoded payload into ``tp`` (no-op for ``Any``/unannotated, and for a value of
    exactly the annotated scalar type: a step's ``int`` result on every replayed step)."""
    if tp is Any or tp is inspect.Parameter.empty or (type(value) is tp and tp in _EXACT):
        return value
    try:
        return msgspec.convert(value, tp, strict=False)
    except (msgspec.ValidationError, TypeError) as exc:
        what = what if isinstance(what, str) else what()
        raise PayloadError(f"{what} does not match its annotation {tp!r}: {exc}") from exc


_RETURN_TYPES: dict[Any, Any] = {}


def return_type(fn: Callable[..., Any]) -> Any:
    """The return annotation of ``fn`` (cached: ``get_type_hints`` costs ~15 us a call)."""
    try:
        return _RETURN_TYPES[fn]
    except (KeyError, TypeError):
        pass
    try:
        tp = typing.get_type_hints(fn).get("return", Any)
    except Exception:
        tp = Any
    try:
        if len(_RETURN_TYPES) < 4096:
            _RETURN_TYPES[fn] = tp
    except TypeError:  # unhashable callable
        pass
    return tp


def _type_name(tp: Any) -> str:
    return tp.__qualname__ if isinstance(tp, type) else repr(tp).replace("typing.", "")


def _build(fn: Callable[..., Coroutine[Any, Any, Any]], name: str | None) -> WorkflowDefinition:
    if not inspect.iscoroutinefunction(fn):
        raise InvalidArgument(f"@aion.workflow needs an async def function, not {fn!r}")
    signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    if not params:
        raise InvalidArgument(
            f"workflow {fn.__qualname__} must take the aion.Context as its first parameter"
        )
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: take values untyped
        hints = {}
    param_types: list[Any] = []
    param_names: list[str] = []
    min_args = 0
    max_args: int | None = 0
    for p in params[1:]:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            max_args = None
            break
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD):
            break
        param_types.append(hints.get(p.name, Any))
        param_names.append(p.name)
        max_args = len(param_types)
        if p.default is inspect.Parameter.empty:
            min_args = len(param_types)
    return WorkflowDefinition(
        name=name or fn.__qualname__,
        fn=fn,
        param_types=tuple(param_types),
        min_args=min_args,
        max_args=max_args,
        param_names=tuple(param_names),
    )


@overload
def workflow(fn: F, /) -> F: ...


@overload
def workflow(*, name: str | None = None) -> Callable[[F], F]: ...


def workflow(fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Mark an ``async def`` as a workflow; its type name is ``name`` or its ``__qualname__``.

    The function stays an ordinary function (callable in unit tests with a fake context); aion
    finds its definition through an attribute.
    """

    def register(f: F) -> F:
        setattr(f, _ATTR, _build(f, name))
        return f

    if fn is not None:
        return register(fn)
    return register


def definition_of(obj: Any) -> WorkflowDefinition:
    """The definition of a decorated workflow function (or a definition itself)."""
    if isinstance(obj, WorkflowDefinition):
        return obj
    definition = getattr(obj, _ATTR, None)
    if not isinstance(definition, WorkflowDefinition):
        raise InvalidArgument(
            f"{_validate.shown(obj)} is not a workflow: decorate it with @aion.workflow"
        )
    return definition
