"""A YAML mapping keyed by plug-in name, one optional settings section each (`stages.scan.detectors`): the built-in
plug-ins are typed fields (exact key paths in errors, generated docs) declared from their config classes alone, so
the schema imports without the plug-ins' code (or torch); a plug-in registered later, by a user's own code, is
accepted under its name and validated by its own config class."""

from __future__ import annotations

import difflib
from typing import Any, ClassVar, Iterator, Optional

from pydantic import ConfigDict, ValidationError, create_model, model_validator
from pydantic_core import PydanticCustomError

from harden.core.base import StrictModel
from harden.core.registry import Registry


class PluginSections(StrictModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    registry: ClassVar[Registry]  # set on each subclass: the plug-ins, each with a `config_cls`

    @model_validator(mode="before")
    @classmethod
    def _later_plugins(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, raw in data.items():
            if name in cls.model_fields:
                continue
            if name not in cls.registry:
                hint = difflib.get_close_matches(name, cls.known(), n=1)
                raise _problem(name, f"unknown {cls.registry.kind}" + (f"; did you mean {hint[0]!r}?" if hint
                               else "") + f" Known: {', '.join(cls.known())}")
            try:
                out[name] = cls.registry.get(name).config_cls.model_validate(raw or {})
            except ValidationError as exc:
                e = exc.errors()[0]
                raise _problem(".".join([name, *map(str, e["loc"])]), e["msg"]) from None
        return out

    @classmethod
    def known(cls) -> list[str]:
        """Every name a section may have: the built-ins and the plug-ins registered so far."""
        return sorted(set(cls.model_fields) | set(cls.registry.names()))

    def items(self) -> Iterator[tuple[str, Any]]:
        """(name, settings) of every section given, built-in plug-ins first."""
        for name in type(self).model_fields:
            if getattr(self, name) is not None:
                yield name, getattr(self, name)
        yield from (self.model_extra or {}).items()


def _problem(key: str, reason: str) -> PydanticCustomError:
    """An error whose key path continues below the section (config.describe_error appends ``key``)."""
    return PydanticCustomError("plugin_section", "{reason}", {"key": key, "reason": reason})


def plugin_sections(model_name: str, registry: Registry,
                    builtins: dict[str, type[StrictModel]]) -> type[PluginSections]:
    """The sections model of one plug-in kind: ``builtins`` (name -> config class) as typed fields, ``registry`` for
    plug-ins registered later."""
    fields = {name: (Optional[config_cls], None) for name, config_cls in builtins.items()}
    model = create_model(model_name, __base__=PluginSections, **fields)
    model.registry = registry
    return model
