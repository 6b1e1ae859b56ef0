"""YAML → ``Config``, validated at this edge; every problem names its line and field."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sluice.errors import ConfigError
from sluice.providers.presets import PRESETS
from sluice.settings import Config, EmulatorSettings, ServerSettings, env_overrides

Path_ = tuple[str | int, ...]


@dataclass(slots=True)
class LoadedConfig:
    """A validated config and the warnings met while loading it."""

    config: Config
    warnings: list[str] = field(default_factory=list)


def _construct(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> Any:
    """Build plain Python values from a composed YAML node, recording each path's line (1-based)."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            if key in out:
                raise ConfigError(
                    "duplicate key", [f"line {key_node.start_mark.line + 1}: duplicate key {key!r}"]
                )
            child = (*path, key)
            lines[child] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, child, lines)
            lines[child] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), lines) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _line_of(loc: Path_, lines: Mapping[Path_, int]) -> int | None:
    for cut in range(len(loc), -1, -1):
        line = lines.get(loc[:cut])
        if line is not None:
            return line
    return None


def _dotted(loc: Path_) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _where(source: str, line: int | None) -> str:
    return f"{source}:{line}" if line is not None else source


def _problem(source: str, loc: Path_, msg: str, lines: Mapping[Path_, int]) -> str:
    return f"{_where(source, _line_of(loc, lines))}: {_dotted(loc)}: {msg}"


def _with_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Apply environment overrides to the sections that declare environment variables."""
    env = dict(environ)
    for section, model in (("server", ServerSettings), ("emulator", EmulatorSettings)):
        over = env_overrides(model, env)
        if over:
            current = raw.get(section)
            raw[section] = {**(current if isinstance(current, dict) else {}), **over}
    return raw


def parse_config(
    text: str, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Validate a YAML document; raise ``ConfigError`` listing every problem with its line."""
    env = os.environ if environ is None else environ
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError("invalid YAML", [f"{_where(source, line)}: invalid YAML: {problem}"]) from exc
    lines: dict[Path_, int] = {}
    raw = _construct(node, (), lines) if node is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError("bad config", [f"{source}:1: the config file must be a mapping"])
    try:
        config = Config.model_validate(_with_env(raw, env))
    except ValidationError as exc:
        problems = [_problem(source, tuple(err["loc"]), err["msg"], lines) for err in exc.errors()]
        raise ConfigError(f"{source}: {len(problems)} problem(s)", problems) from exc
    problems, warnings = _cross_check(config, lines, source, env)
    if problems:
        raise ConfigError(f"{source}: {len(problems)} problem(s)", problems)
    return LoadedConfig(config, warnings)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read and validate a config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {p}", [f"{p}: cannot read: {exc.strerror}"]) from exc
    return parse_config(text, str(p), environ)


def _cross_check(
    config: Config, lines: Mapping[Path_, int], source: str, env: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    warnings: list[str] = []

    def at(loc: Path_, msg: str) -> str:
        return f"{_where(source, _line_of(loc, lines))}: {_dotted(loc)}: {msg}"

    names: set[str] = set()
    for i, prov in enumerate(config.providers):
        loc: Path_ = ("providers", i)
        if prov.name in names:
            problems.append(at((*loc, "name"), f"duplicate provider name {prov.name!r}"))
        names.add(prov.name)
        preset = PRESETS[prov.preset]
        if prov.api_key is None:
            if preset.key_required:
                problems.append(at(loc, f"provider {prov.name!r} needs api_key (e.g. env:{preset.key_env})"))
        elif prov.api_key.startswith("env:"):
            var = prov.api_key[4:]
            if not var:
                problems.append(at((*loc, "api_key"), "env: reference names no variable"))
        elif not config.allow_literal_keys:
            problems.append(
                at((*loc, "api_key"), "a literal key is refused; use env:NAME (or set allow_literal_keys)")
            )
        else:
            warnings.append(at((*loc, "api_key"), "literal provider key in the config file"))
    aliases: set[str] = set()
    for i, model in enumerate(config.models):
        if model.name in aliases:
            problems.append(at(("models", i, "name"), f"duplicate model name {model.name!r}"))
        aliases.add(model.name)
        for j, dep in enumerate(model.deployments):
            loc = ("models", i, "deployments", j, "provider")
            prov_cfg = next((p for p in config.providers if p.name == dep.provider), None)
            if prov_cfg is None:
                problems.append(at(loc, f"unknown provider {dep.provider!r}"))
            elif model.mode == "embedding" and not PRESETS[prov_cfg.preset].embeddings:
                problems.append(at(loc, f"provider {dep.provider!r} ({prov_cfg.preset}) has no embeddings"))
    del env  # secrets are resolved at startup (sluice.app), where a missing variable is reported
    return problems, warnings


def resolve_secret(ref: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """Turn ``env:NAME`` into the variable's value; a literal (allowed by config) is returned as is."""
    if ref is None:
        return None
    if ref.startswith("env:"):
        env = os.environ if environ is None else environ
        value = env.get(ref[4:])
        if not value:
            raise ConfigError(f"environment variable {ref[4:]} is not set")
        return value
    return ref


def render_docs() -> str:
    """Markdown reference of every setting, generated from the models in ``sluice.settings``."""
    from sluice.settings import SECTIONS  # noqa: PLC0415  (kept local: only the docs command needs it)

    out = [
        "# Configuration reference",
        "",
        "Generated by `sluice config docs` from `src/sluice/settings.py`; a test keeps this page in sync.",
        "Environment variables override the file. Check a file with `sluice config check FILE`.",
        "",
    ]
    for model in SECTIONS:
        out += [f"## {model.__name__}", "", (model.__doc__ or "").strip(), ""]
        out += ["| setting | default | env | description |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            default = "required" if info.is_required() else _show_default(info.default)
            env = f"`{extra['env']}`" if extra.get("env") else ""
            desc = (info.description or "").replace("|", "\\|")
            out.append(f"| `{name}` | {default} | {env} | {desc} |")
        out.append("")
    return "\n".join(out)


def _show_default(value: Any) -> str:
    if isinstance(value, BaseModel):
        return f"see {type(value).__name__}"
    return f"`{value!r}`"
