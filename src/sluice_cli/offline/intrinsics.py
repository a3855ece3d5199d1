"""CloudFormation intrinsic functions and conditions, resolved against a local stack.

Written by hand because no library resolves intrinsics against *our* physical resources
(cfn-lint and samtranslator only resolve parameters). The resolver takes the resources' values
through a callback, so it is pure and tested on its own.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

ACCOUNT_ID = "123456789012"  # moto's default account: every ARN moto builds uses it


class IntrinsicError(Exception):
    """An intrinsic function that cannot be resolved (bad shape, unknown name)."""


class _NoValue:
    """AWS::NoValue: the property is removed, as if it was never written."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()

_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


def pseudo_parameters(region: str, stack_name: str) -> dict[str, Any]:
    return {
        "AWS::Region": region,
        "AWS::AccountId": ACCOUNT_ID,
        "AWS::StackName": stack_name,
        "AWS::StackId": f"arn:aws:cloudformation:{region}:{ACCOUNT_ID}:stack/{stack_name}/offline",
        "AWS::Partition": "aws",
        "AWS::URLSuffix": "amazonaws.com",
        "AWS::NotificationARNs": [],
        "AWS::NoValue": NO_VALUE,
    }


# What the resolver asks of the stack: the Ref value and an attribute of a resource.
RefLookup = Callable[[str], Any]
AttributeLookup = Callable[[str, str], Any]


@dataclass
class Resolver:
    """Resolves intrinsic functions in a value; resources answer through `ref` and `get_att`."""

    parameters: dict[str, Any]
    pseudo: dict[str, Any]
    ref: RefLookup
    get_att: AttributeLookup
    conditions: dict[str, Any] = field(default_factory=dict)
    mappings: dict[str, Any] = field(default_factory=dict)
    _condition_values: dict[str, bool] = field(default_factory=dict, init=False)

    def resolve(self, value: Any) -> Any:
        """The value with every intrinsic replaced; AWS::NoValue entries are dropped."""
        if isinstance(value, list):
            items = [self.resolve(item) for item in value]
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((name, argument),) = value.items()
            handler = self._functions().get(name)
            if handler is not None:
                return handler(argument)
        resolved = {key: self.resolve(item) for key, item in value.items()}
        return {key: item for key, item in resolved.items() if item is not NO_VALUE}

    def condition(self, name: str) -> bool:
        if name not in self._condition_values:
            if name not in self.conditions:
                raise IntrinsicError(f"unknown condition {name!r}")
            self._condition_values[name] = bool(self._evaluate_condition(self.conditions[name]))
        return self._condition_values[name]

    # -- functions ---------------------------------------------------------------------------------

    def _functions(self) -> dict[str, Callable[[Any], Any]]:
        return {
            "Ref": self._ref,
            "Fn::GetAtt": self._get_att,
            "Fn::Sub": self._sub,
            "Fn::Join": self._join,
            "Fn::Select": self._select,
            "Fn::Split": self._split,
            "Fn::If": self._if,
            "Fn::Equals": self._equals,
            "Fn::Not": self._not,
            "Fn::And": self._and,
            "Fn::Or": self._or,
            "Condition": self.condition,
            "Fn::FindInMap": self._find_in_map,
            "Fn::GetAZs": self._get_azs,
            "Fn::Base64": lambda argument: base64.b64encode(str(self.resolve(argument)).encode()).decode(),
            "Fn::ToJsonString": lambda argument: json.dumps(self.resolve(argument), separators=(",", ":")),
            "Fn::Length": lambda argument: len(self.resolve(argument)),
        }

    def _ref(self, name: Any) -> Any:
        name = self.resolve(name)
        if name in self.parameters:
            return self.parameters[name]
        if name in self.pseudo:
            return self.pseudo[name]
        return self.ref(name)

    def _get_att(self, argument: Any) -> Any:
        if isinstance(argument, str):
            logical_id, _, attribute = argument.partition(".")
        else:
            logical_id, attribute = (self.resolve(part) for part in argument)
        if not attribute:
            raise IntrinsicError(f"Fn::GetAtt {argument!r}: no attribute")
        return self.get_att(logical_id, attribute)

    def _sub(self, argument: Any) -> str:
        if isinstance(argument, str):
            text, variables = argument, {}
        else:
            text, raw_variables = argument
            variables = {key: self.resolve(value) for key, value in raw_variables.items()}

        def replace(match: re.Match[str]) -> str:
            expression = match.group(1)
            if expression.startswith("!"):  # ${!Literal} stays as ${Literal}
                return "${" + expression[1:] + "}"
            if expression in variables:
                return _as_text(variables[expression])
            if "." in expression and not expression.startswith("AWS::"):
                logical_id, _, attribute = expression.partition(".")
                return _as_text(self.get_att(logical_id, attribute))
            return _as_text(self._ref(expression))

        return _SUB_VARIABLE.sub(replace, text)

    def _join(self, argument: Any) -> str:
        delimiter, items = argument
        resolved = self.resolve(items)
        return str(delimiter).join(_as_text(item) for item in resolved)

    def _select(self, argument: Any) -> Any:
        index, items = (self.resolve(part) for part in argument)
        return items[int(index)]

    def _split(self, argument: Any) -> list[str]:
        delimiter, text = (self.resolve(part) for part in argument)
        return str(text).split(str(delimiter))

    def _if(self, argument: Any) -> Any:
        name, when_true, when_false = argument
        return self.resolve(when_true if self.condition(name) else when_false)

    def _equals(self, argument: Any) -> bool:
        left, right = (self.resolve(part) for part in argument)
        return _as_text(left) == _as_text(right)

    def _not(self, argument: Any) -> bool:
        (inner,) = argument
        return not self._evaluate_condition(inner)

    def _and(self, argument: Any) -> bool:
        return all(self._evaluate_condition(part) for part in argument)

    def _or(self, argument: Any) -> bool:
        return any(self._evaluate_condition(part) for part in argument)

    def _evaluate_condition(self, value: Any) -> bool:
        if isinstance(value, dict) and set(value) == {"Condition"}:
            return self.condition(value["Condition"])
        return bool(self.resolve(value))

    def _find_in_map(self, argument: Any) -> Any:
        map_name, top, second = (self.resolve(part) for part in argument[:3])
        try:
            return self.mappings[map_name][top][second]
        except KeyError:
            if len(argument) > 3 and isinstance(argument[3], dict) and "DefaultValue" in argument[3]:
                return self.resolve(argument[3]["DefaultValue"])
            raise IntrinsicError(f"Fn::FindInMap: no {map_name}/{top}/{second}") from None

    def _get_azs(self, argument: Any) -> list[str]:
        region = self.resolve(argument) or self.pseudo["AWS::Region"]
        return [f"{region}{zone}" for zone in "abc"]


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(_as_text(item) for item in value)
    return str(value)


def references(value: Any, resources: Iterable[str]) -> set[str]:
    """Logical ids of the resources a value refers to (Ref, GetAtt, Sub), for ordering creation."""
    known = set(resources)
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        for key, argument in node.items():
            if key == "Ref" and isinstance(argument, str):
                found.add(argument)
            elif key == "Fn::GetAtt":
                target = argument.split(".", 1)[0] if isinstance(argument, str) else argument[0]
                if isinstance(target, str):
                    found.add(target)
            elif key == "Fn::Sub":
                text = argument if isinstance(argument, str) else argument[0]
                for expression in _SUB_VARIABLE.findall(text):
                    if not expression.startswith("!"):
                        found.add(expression.split(".", 1)[0])
                if not isinstance(argument, str):
                    walk(argument[1])
                    continue
            walk(argument)

    walk(value)
    return found & known


def creation_order(resources: dict[str, dict[str, Any]]) -> list[str]:
    """Logical ids ordered so that each resource comes after everything it refers to or depends on.

    Ties keep template order (Kahn's algorithm over a stable list), so output is deterministic.
    """
    names = list(resources)
    depends: dict[str, set[str]] = {}
    for name, resource in resources.items():
        explicit = resource.get("DependsOn") or []
        explicit = [explicit] if isinstance(explicit, str) else list(explicit)
        missing = [target for target in explicit if target not in resources]
        if missing:
            raise IntrinsicError(f"{name} DependsOn unknown resources: {', '.join(missing)}")
        found = references(resource.get("Properties") or {}, names) | set(explicit)
        found.discard(name)
        depends[name] = found
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(names):
        ready = [name for name in names if name not in done and depends[name] <= done]
        if not ready:
            cycle = sorted(name for name in names if name not in done)
            raise IntrinsicError(f"circular references between resources: {', '.join(cycle)}")
        for name in ready:
            order.append(name)
            done.add(name)
    return order
