"""The setting flags of ``nas search``, generated from ``SearchConfig``: one flag per field, nothing written twice.

Field ``max_epochs`` is the flag ``--max-epochs``; its type comes from the annotation (``Literal`` fields are
choices, ``bool`` fields are ``--x/--no-x`` flags, mappings are YAML text), its help from the field's description
and default, its help panel from ``SETTING_GROUPS``. Every flag defaults to None, so only the flags given on the
command line override the ``--config`` file, which overrides the defaults.

The flags are built when ``nas search`` parses its arguments or shows its help, not when ``nas --help`` lists the
commands: ``SearchConfig`` needs pydantic, which the rest of the command line does not import up front.
"""

from __future__ import annotations

import functools
import inspect
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
import typer.main
from rich.markup import escape
from typer.core import TyperCommand

_GIVEN = "nas.given_settings"  # ctx.meta key: the settings given on the command line
_SCALARS = (int, float, str, bool, Path)


def option_name(setting: str) -> str:
    """The flag of a setting: ``max_epochs`` -> ``--max-epochs``."""
    return "--" + setting.replace("_", "-")


def _flag_type(annotation: Any) -> tuple[Any, bool]:
    """The type the flag is parsed as, and whether its value is YAML text (mappings, lists: SearchConfig checks them)."""
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = [kind for kind in get_args(annotation) if kind is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else None
    if annotation in _SCALARS or get_origin(annotation) is Literal:
        return annotation, False
    return str, True


def _yaml_value(value: str | None) -> Any:
    """A flag given as YAML text, e.g. ``--hparams '{lr: [0.001, 0.01]}'``."""
    if value is None:
        return None
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        raise typer.BadParameter(f"'{value}' is not valid YAML; write a mapping such as '{{lr: [0.001, 0.01]}}'") from None


def _help(setting: str, rich_markup: bool) -> str:
    """The field's description as a sentence, with its default."""
    from nas_core.config import SearchConfig, default_text, range_text

    field = SearchConfig.model_fields[setting]
    description = field.description or ""
    allowed = range_text(setting)
    text = description[:1].upper() + description[1:] + (f" ({allowed})" if allowed else "") + "."
    default = default_text(setting)
    if isinstance(field.default, bool):
        default = option_name(setting)[2:] if field.default else "no-" + option_name(setting)[2:]
    if default is not None:
        text += f" [default: {default}]"
    return escape(text) if rich_markup else text


@functools.cache
def setting_options(rich_markup: bool = True) -> tuple[Any, ...]:
    """One typer option per ``SearchConfig`` field, in ``SETTING_GROUPS`` order, each in its group's help panel.

    typer builds them from a signature made from the fields, so they are of the click that typer uses.
    """
    from nas_core.config import SETTING_GROUPS, SearchConfig

    panels = {name: group for group, names in SETTING_GROUPS.items() for name in names}
    names = [*panels, *(name for name in SearchConfig.model_fields if name not in panels)]
    parameters = []
    for name in names:
        kind, yaml_text = _flag_type(SearchConfig.model_fields[name].annotation)
        flag = option_name(name)
        option = typer.Option(
            f"{flag}/--no-{flag[2:]}" if kind is bool else flag,
            help=_help(name, rich_markup),
            show_default=False,
            rich_help_panel=panels.get(name, "Other settings"),
            metavar="YAML" if yaml_text else None,
            callback=_yaml_value if yaml_text else None,
        )
        annotation = Annotated[kind | None, option]
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))

    def settings(**values: Any) -> None:
        """Never called: its signature carries the options."""

    settings.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    settings.__annotations__ = {p.name: p.annotation for p in parameters}
    carrier = typer.Typer(add_completion=False)
    carrier.command()(settings)
    return tuple(typer.main.get_command(carrier).params)


class SearchCommand(TyperCommand):
    """A typer command with the setting options of ``setting_options`` after its own; read them with ``given_settings``."""

    def _settings(self) -> tuple[Any, ...]:
        return setting_options(rich_markup=self.rich_markup_mode == "rich")

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        help_option = self.get_help_option(ctx)
        own = [param for param in params if param is not help_option]
        return [*own, *self._settings(), *([help_option] if help_option is not None else [])]

    def invoke(self, ctx: Any) -> Any:
        # The command's function takes its own options only: the settings move to ctx.meta.
        values = {param.name: ctx.params.pop(param.name, None) for param in self._settings()}
        ctx.meta[_GIVEN] = {name: value for name, value in values.items() if value is not None}
        return super().invoke(ctx)


def given_settings(ctx: Any) -> dict[str, Any]:
    """The settings given on the command line of a ``SearchCommand``, by field name (flags left out are absent)."""
    return dict(ctx.meta.get(_GIVEN, {}))
