"""What `rodin submit train` and `rodin submit sweep` share: their setting options (generated
from the declaration in atlas_core.config, `training_settings`), the local worker started before
anything is written, and the notes printed with a submission.

A command takes the settings with `@with_settings(grid=...)` on a function whose own options are
declared as usual and whose settings arrive in one `**given` mapping, by flat name.
"""


import inspect
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from orchestrator.cli.context import settings
from orchestrator.cli.output import err

if TYPE_CHECKING:
    from atlas_core.config import Setting

#: The metavar of a grid flag, by the setting's type.
_METAVARS = {int: "INT,...", float: "FLOAT,...", str: "TEXT,..."}
_KW = inspect.Parameter.KEYWORD_ONLY


@lru_cache(maxsize=1)
def _presets() -> tuple[dict[str, Any], dict[str, Any]]:
    """The CPU and reference presets, flat, for the defaults shown in help (atlas_core.config
    is plain dataclasses: no torch)."""
    from atlas_core.config import TrainConfig

    return TrainConfig.cpu().flat(), TrainConfig.reference().flat()


def setting_help(setting: "Setting") -> str:
    """The setting's help with its defaults read from the presets."""
    cpu_preset, reference_preset = _presets()
    cpu, ref = cpu_preset[setting.name], reference_preset[setting.name]
    shown = (lambda v: "on" if v else "off") if isinstance(cpu, bool) else str
    default = f"default: {shown(cpu)}" + (f"; --reference: {shown(ref)}" if ref != cpu else "")
    return f"{setting.help} ({default})."


def flag_settings() -> list["Setting"]:
    """The settings a command offers as flags, in declaration order."""
    from atlas_core.config import training_settings

    return [s for s in training_settings() if s.flag]


def _parameter(setting: "Setting", grid: bool) -> inspect.Parameter:
    """A setting as a keyword parameter of a Typer command (default None: not given). On a
    grid, a setting that is not on/off takes a comma list (text, parsed by the command)."""
    names = f"{setting.flag}/{setting.off_flag}" if setting.off_flag else str(setting.flag)
    if grid and setting.kind is not bool:
        option = typer.Option(names, help=setting_help(setting), show_default=False,
                              metavar=_METAVARS.get(setting.kind, "TEXT,..."))
        annotation: Any = Annotated[str | None, option]
    else:
        option = typer.Option(names, help=setting_help(setting), show_default=False)
        annotation = Annotated[setting.kind | None, option]
    return inspect.Parameter(setting.name, _KW, default=None, annotation=annotation)


def with_settings(grid: bool) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command every setting of `training_settings()` as an option, after its first
    parameter (`--dataset`); the command receives them in its `**given` parameter.

    Typer reads a command's options from its signature, so the signature is rewritten; the
    command's own parameters keep their declarations."""
    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = [p.replace(kind=_KW) for p in inspect.signature(command).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        generated = [_parameter(s, grid) for s in flag_settings()]
        command.__signature__ = inspect.Signature([own[0], *generated, *own[1:]])  # type: ignore[attr-defined]
        return command

    return decorate


def given_settings(values: dict[str, Any]) -> dict[str, Any]:
    """The settings given (not None), by flat name, in declaration order."""
    return {name: value for name, value in values.items() if value is not None}


def ensure_worker(quiet: bool) -> None:
    """On the embedded default, start a background worker if none is alive."""
    from workers.supervisor import ensure_local_worker

    started = ensure_local_worker(settings())
    if started is not None and not quiet:
        err.print(f"No worker was running: started one in the background (pid {started.pid}, "
                  f"log {escape(str(started.log))}); stop it with `rodin down`.")


def print_notes(warnings: list[str]) -> None:
    for warning in warnings:
        err.print(f"[yellow]note:[/] {escape(warning)}")
