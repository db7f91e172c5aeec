"""The model of a config file for a script's options, built from the script's own argparse flags.

Every option a parser declares (``cli/flags.py``'s shared ones and the script's own) is a field, named by
the option's ``dest`` (``--bandwidth-cap`` is ``spec_cap_mbps``), optional (unset: the flag's default),
and validated as the flag validates its text: by the flag's argparse ``type`` and ``choices``, a switch
by a YAML boolean, at most one option of a mutually exclusive group. So a file can set whatever a flag
can, no list of fields is written twice, and a bad value is the flag's own message, under the field's
name.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, create_model, model_validator

NOT_OPTIONS = frozenset({"help", "scenario"})  # argparse's own, and the file that holds the options
SWITCHES = (argparse._StoreTrueAction, argparse._StoreFalseAction)


def options_model(
    parser: argparse.ArgumentParser,
    name: str,
    base: type[BaseModel],
    comma_lists: Collection[str] = (),
) -> type[BaseModel]:
    """A subclass of ``base`` with one field per option of ``parser`` (see the module docstring).

    ``comma_lists``: options whose flag takes a comma list; their field takes a YAML list (or the same
    comma text) and holds a list. An option named like an attribute of ``base`` (``json``) is that
    option in the file and in ``model_dump(by_alias=True)``, and attribute ``json_`` of the model.
    """
    fields: dict[str, Any] = {}
    attribute: dict[str, str] = {}  # option -> its attribute on the model
    for action in parser._actions:
        dest = action.dest
        if action.option_strings and dest not in NOT_OPTIONS and dest not in attribute:
            attribute[dest] = f"{dest}_" if hasattr(base, dest) else dest
            check = _flag_check(action, dest in comma_lists)
            fields[attribute[dest]] = (Annotated[Any, BeforeValidator(check)], Field(None, alias=dest))
    groups = [
        [a.dest for a in group._group_actions if a.dest in attribute]
        for group in parser._mutually_exclusive_groups
    ]
    exclusive = [g for g in groups if len(g) > 1]

    def one_per_group(options: BaseModel) -> BaseModel:
        for group in exclusive:
            if len(chosen := [d for d in group if getattr(options, attribute[d]) is not None]) > 1:
                raise ValueError(f"{' and '.join(chosen)} exclude each other: choose one")
        return options

    validators = {"_one_per_group": model_validator(mode="after")(one_per_group)}
    return create_model(name, __base__=base, __validators__=validators, **fields)


def _flag_check(action: argparse.Action, comma_list: bool) -> Callable[[Any], Any]:
    """How the field of ``action`` turns a YAML value into the option's value, or says what is wrong."""
    if isinstance(action, SWITCHES):
        return _switch
    if type(action) is not argparse._StoreAction or action.nargs is not None:
        raise TypeError(f"option {action.dest!r}: no file field for a {type(action).__name__}")

    def check(value: Any) -> Any:
        if value is None:
            return None
        if comma_list:
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
                raise ValueError("expected a list of names (or one comma list)")
            return items
        return _flag_value(action, value)

    return check


def _switch(value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"expected true or false, not {value!r}")
    return value


def _flag_value(action: argparse.Action, value: Any) -> Any:
    """``value`` read as the flag reads its text."""
    if isinstance(value, bool):  # YAML reads unquoted on/off/yes/no as booleans too
        raise ValueError(f"expected a value, not the boolean {value!r} (quote it if you mean the text)")
    if not isinstance(value, str | int | float):
        raise ValueError(f"expected a single value, not {value!r}")
    text = str(value)
    if action.type is None:
        converted: Any = text
    else:
        try:
            converted = action.type(text)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(str(exc)) from None
        except (TypeError, ValueError):
            kind = getattr(action.type, "__name__", repr(action.type))
            raise ValueError(f"invalid {kind} value: {text!r}") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"invalid choice {text!r} (choose from {', '.join(map(str, action.choices))})")
    return converted
