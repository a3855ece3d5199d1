"""Static reading of an ASL definition: its scopes, the transitions between states, reachability.

A state machine is a set of scopes (the top level, each Map's ItemProcessor, each Parallel
branch); a transition never leaves its scope, so every check is made per scope.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


@dataclass(frozen=True)
class Scope:
    path: str  # where it sits, for messages: "top", "top/Process batch", ...
    start_at: str
    states: dict[str, dict[str, Any]]


def scopes(definition: dict[str, Any], path: str = "top") -> Iterator[Scope]:
    yield Scope(path, definition["StartAt"], definition["States"])
    for name, state in definition["States"].items():
        processor = state.get("ItemProcessor") or state.get("Iterator")
        if processor:
            yield from scopes(processor, f"{path}/{name}")
        for index, branch in enumerate(state.get("Branches", [])):
            yield from scopes(branch, f"{path}/{name}[{index}]")


def all_states(definition: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for scope in scopes(definition):
        yield from scope.states.items()


def targets(state: dict[str, Any]) -> set[str]:
    """Every state name this state can go to next (Next, Default, Choices, Catch)."""
    found = {state[key] for key in ("Next", "Default") if key in state}
    found |= {choice["Next"] for choice in state.get("Choices", [])}
    found |= {catcher["Next"] for catcher in state.get("Catch", [])}
    return found


def reachable(scope: Scope) -> set[str]:
    seen: set[str] = set()
    todo = [scope.start_at]
    while todo:
        name = todo.pop()
        if name in seen or name not in scope.states:
            continue
        seen.add(name)
        todo.extend(targets(scope.states[name]))
    return seen


def is_terminal(state: dict[str, Any]) -> bool:
    return state["Type"] in {"Succeed", "Fail"} or state.get("End") is True


def keys_anywhere(node: Any) -> Iterator[str]:
    """Every key of every object in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from keys_anywhere(value)
    elif isinstance(node, list):
        for item in node:
            yield from keys_anywhere(item)


def strings_anywhere(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings_anywhere(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_anywhere(item)
