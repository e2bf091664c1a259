"""aion.errors: the drawn hierarchy matches the classes, typed errors build their messages and
keep their arguments, and every error pickles."""

from __future__ import annotations

import builtins
import pickle
import re

import pytest

import aion
from aion import errors


def drawn_tree() -> dict[str, tuple[str, ...]]:
    """The hierarchy drawn in the module docstring: each class and its bases, in order (the
    class it is indented under, then the standard bases in parentheses)."""
    doc = errors.__doc__ or ""
    block = doc.split("::\n", 1)[1]
    bases: dict[str, tuple[str, ...]] = {}
    parents: list[tuple[int, str]] = []  # (indent, name) of the lines enclosing this one
    for line in block.splitlines():
        if not line.strip():
            continue
        match = re.fullmatch(r"( *)(\w+)(?:\(([\w, ]+)\))?", line)
        assert match, f"not a line of the tree: {line!r}"
        indent, name = len(match[1]), match[2]
        extra = tuple(b.strip() for b in match[3].split(",")) if match[3] else ()
        while parents and parents[-1][0] >= indent:
            parents.pop()
        assert name not in bases, f"{name} is drawn twice"
        bases[name] = ((parents[-1][1],) if parents else ()) + extra
        parents.append((indent, name))
    return bases


def real_tree() -> dict[str, tuple[str, ...]]:
    return {
        name: tuple(base.__name__ for base in getattr(errors, name).__bases__)
        for name in errors.__all__
    }


def test_the_drawn_hierarchy_is_the_real_one() -> None:
    drawn = drawn_tree()
    assert sorted(drawn) == sorted(errors.__all__), "every error is drawn, and only those"
    assert drawn == real_tree()
    for name in errors.__all__:  # a base that is not an aion error is the builtin of its name
        for base in getattr(errors, name).__bases__:
            assert base.__name__ in errors.__all__ or base is getattr(builtins, base.__name__)


def test_a_drawing_that_drifted_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = errors.__doc__ or ""
    moved = doc.replace("            ActivationFailed", "        ActivationFailed")
    assert moved != doc
    monkeypatch.setattr(errors, "__doc__", moved)
    assert drawn_tree()["ActivationFailed"] == ("AionError",)
    assert drawn_tree() != real_tree()


# --- typed arguments, messages, pickling ---------------------------------------------------


#: Constructor arguments of every error with typed arguments; the others take a message.
TYPED: dict[type[BaseException], tuple[tuple[object, ...], dict[str, object]]] = {
    errors.SequenceConflict: (("order-7", 3, 5, "acme"), {}),
    errors.CorruptRecord: (("runs", b"\x00k", "truncated"), {}),
    errors.WorkflowNotFound: (("order-7", "acme"), {}),
    errors.WorkflowBlocked: (("order-7", "nondeterminism", "the decision"), {}),
    errors.WorkflowFailed: (("order-7", "ValueError", "bad"), {}),
    errors.WorkflowClosed: (("order-7", "completed", "signals or cancellations"), {}),
    errors.StepError: (("charge", "TimeoutError", "slow", 3), {}),
    errors.NondeterminismError: (
        ("order-7", 12, "step 'charge_card' (#2)", "calls step 'reserve_stock' (#2)"),
        {"workflow_type": "order"},
    ),
    errors.ActivationFailed: (
        ("order-7", 4, "raised SystemExit at app.py:3 in order", "Fix the code"),
        {"workflow_type": "order"},
    ),
}


def example(name: str) -> BaseException:
    cls = getattr(errors, name)
    args, kwargs = TYPED.get(cls, (("something went wrong",), {}))
    return cls(*args, **kwargs)  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_pickles(name: str) -> None:
    error = example(name)
    error.add_note("a note")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert vars(copy) == vars(error)  # the typed arguments, and the note


def test_nondeterminism_names_workflow_position_recorded_now_and_what_to_do() -> None:
    error = example("NondeterminismError")
    assert isinstance(error, errors.NondeterminismError)
    assert str(error) == (
        "workflow 'order-7' (order) diverged at event 12: history has step 'charge_card' (#2), "
        "the code now calls step 'reserve_stock' (#2). Did the workflow code change? Use "
        "ctx.patched() for new code paths, or restore the old code, then restart the engine."
    )
    assert (error.workflow_id, error.position, error.workflow_type) == ("order-7", 12, "order")
    assert error.recorded == "step 'charge_card' (#2)"
    assert error.now == "calls step 'reserve_stock' (#2)"


def test_nondeterminism_detail_and_remedy_replace_their_parts() -> None:
    error = errors.NondeterminismError(
        "",
        "3",
        "StepScheduled",
        "has not started the run",
        workflow_type="order",
        detail="the history does not begin with WorkflowStarted",
        remedy="Replay a whole history.",
    )
    assert str(error) == (
        "workflow 'order' diverged at event 3: the history does not begin with WorkflowStarted. "
        "Replay a whole history."
    )
    assert vars(pickle.loads(pickle.dumps(error))) == vars(error)
    assert (
        errors.NondeterminismError("wf", 1, "a", "b")
        .args[0]
        .startswith("workflow 'wf' diverged at event 1: history has a, the code now b.")
    )


def test_activation_failed_is_a_nondeterminism_error_with_its_own_message() -> None:
    error = example("ActivationFailed")
    assert isinstance(error, aion.NondeterminismError)
    assert str(error) == (
        "workflow 'order-7' (order) raised SystemExit at app.py:3 in order. Fix the code, then "
        "`aion unblock order-7` (or restart the engine)."
    )
    assert (error.workflow_id, error.position, error.recorded) == ("order-7", 4, "")
    assert "`aion unblock ID`" in str(errors.ActivationFailed("", 0, "did x", "Fix it"))


def test_workflow_closed_names_the_run_how_it_ended_and_what_it_takes_no_more() -> None:
    error = example("WorkflowClosed")
    assert isinstance(error, errors.WorkflowClosed)
    assert str(error) == (
        "workflow 'order-7' has finished (completed); it takes no more signals or cancellations"
    )
    assert (error.workflow_id, error.status, error.what) == (
        "order-7",
        "completed",
        "signals or cancellations",
    )
    assert str(errors.WorkflowClosed("w")) == "workflow 'w' has finished"
