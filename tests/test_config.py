"""The config file: validated at load, every problem with its line and field; docs generated and in sync."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sluice.config_file import parse_config, render_docs, resolve_secret
from sluice.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
GOOD = """\
server:
  port: 4100
providers:
  - name: ds
    preset: deepseek
    api_key: env:DS_KEY
  - name: local
    preset: openai_compatible
    base_url: http://127.0.0.1:9999/v1
models:
  - name: chat
    deployments:
      - provider: ds
        model: deepseek-flash
  - name: local-embed
    mode: embedding
    deployments: [{provider: local, model: e5}]
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "c.yaml", environ=env or {})
    return exc.value.problems


def test_good_config_loads() -> None:
    loaded = parse_config(GOOD, "c.yaml", environ={})
    assert loaded.config.server.port == 4100
    assert [m.name for m in loaded.config.models] == ["chat", "local-embed"]
    assert loaded.warnings == []


def test_type_error_names_line_and_field() -> None:
    found = problems(GOOD.replace("port: 4100", "port: lots"))
    assert found == [
        "c.yaml:2: server.port: Input should be a valid integer, unable to parse string as an integer"
    ]


def test_unknown_field_names_its_line() -> None:
    found = problems(GOOD.replace("    preset: deepseek", "    preset: deepseek\n    api_bse: x"))
    assert any(p.startswith("c.yaml:6: providers[0].api_bse:") and "Extra inputs" in p for p in found)


def test_unknown_preset_and_provider_and_duplicates() -> None:
    text = GOOD.replace("preset: deepseek", "preset: deepsick").replace("provider: ds", "provider: dx")
    text += "  - name: chat\n    deployments: [{provider: ds, model: x}]\n"
    found = problems(text)
    assert any("c.yaml:5: providers[0].preset" in p and "unknown preset 'deepsick'" in p for p in found)
    found = problems(
        GOOD.replace("provider: ds", "provider: dx")
        + "  - name: chat\n    deployments: [{provider: ds, model: x}]\n"
    )
    assert "c.yaml:13: models[0].deployments[0].provider: unknown provider 'dx'" in found
    assert any(p.startswith("c.yaml:18: models[2].name: duplicate model name") for p in found)


def test_literal_key_refused_unless_allowed() -> None:
    text = GOOD.replace("env:DS_KEY", "sk-live-abc123")
    found = problems(text)
    assert any("c.yaml:6: providers[0].api_key: a literal key is refused" in p for p in found)
    loaded = parse_config("allow_literal_keys: true\n" + text, "c.yaml", environ={})
    assert any("literal provider key" in w for w in loaded.warnings)


def test_missing_key_and_bad_urls() -> None:
    found = problems(GOOD.replace("    api_key: env:DS_KEY\n", ""))
    assert any("providers[0]: provider 'ds' needs api_key" in p for p in found)
    found = problems(GOOD.replace("http://127.0.0.1:9999/v1", "ftp://x"))
    assert any("providers[1].base_url" in p and "http://" in p for p in found)
    found = problems(GOOD.replace("    base_url: http://127.0.0.1:9999/v1\n", ""))
    assert any("openai_compatible needs a base_url" in p for p in found)


def test_embeddings_on_a_provider_without_them() -> None:
    found = problems(
        GOOD.replace(
            "deployments: [{provider: local, model: e5}]", "deployments: [{provider: ds, model: e5}]"
        )
    )
    assert any("has no embeddings" in p for p in found)


def test_invalid_yaml_and_non_mapping() -> None:
    assert problems("server: [1,\n")[0].startswith("c.yaml:")
    assert problems("- 1\n- 2\n") == ["c.yaml:1: the config file must be a mapping"]
    assert "duplicate key" in problems("server: {}\nserver: {}\n")[0]


def test_body_limit_is_capped_at_32_mib() -> None:
    found = problems("server:\n  max_body_bytes: 40000000\n")
    assert any("server.max_body_bytes" in p for p in found)


def test_environment_overrides_the_file() -> None:
    loaded = parse_config(GOOD, environ={"SLUICE_PORT": "4200", "SLUICE_DATA_DIR": "state-dir"})
    assert loaded.config.server.port == 4200
    assert loaded.config.server.data_dir == "state-dir"


def test_secret_references() -> None:
    assert resolve_secret("env:K", {"K": "v"}) == "v"
    assert resolve_secret(None) is None
    with pytest.raises(ConfigError):
        resolve_secret("env:MISSING", {})


def test_docs_page_is_generated_and_in_sync() -> None:
    assert (ROOT / "docs" / "config.md").read_text() == render_docs() + "\n", (
        "run: sluice config docs > docs/config.md"
    )


def test_every_setting_is_documented() -> None:
    from sluice.settings import SECTIONS  # noqa: PLC0415

    for model in SECTIONS:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no help text"


def test_config_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    ok = subprocess.run(
        [sys.executable, "-m", "sluice.cli", "config", "check", str(good)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "OK (2 providers, 2 models)" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("port: 4100", "port: -1"))
    res = subprocess.run(
        [sys.executable, "-m", "sluice.cli", "config", "check", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 1
    assert f"{bad}:2: server.port" in res.stderr
