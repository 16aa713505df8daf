"""Configuration: defaults run stand-alone, bad files are refused naming the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from aenode.cli import main
from aenode.config import CONFIG_ENV, ConfigError, load_config, parse_config, render_toml


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aenode.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_gpu_no_pacs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    config = load_config(None)
    assert config.node.ae_title == "AENODE"
    assert config.node.host == "127.0.0.1"
    assert config.destinations == []
    assert "cpu" in config.model.providers
    assert config.stability.quiet_seconds == 30


def test_all_design_keys_load(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [node]
        ae_title = "NODE1"
        host = "127.0.0.1"
        port = 11199
        data_dir = "/tmp/aenode-x"
        [stability]
        quiet_seconds = 5
        [[sources]]
        ae_title = "CT1"
        [[sources]]
        ae_title = "CT2"
        host = "127.0.0.1"
        [[destinations]]
        name = "pacs"
        ae_title = "ORTHANC"
        host = "127.0.0.1"
        port = 4242
        [model]
        path = "models"
        [web]
        host = "127.0.0.1"
        port = 8081
        [alerts.webhook]
        url = "http://127.0.0.1:9999/hook"
        insecure = true
        [alerts.smtp]
        host = "127.0.0.1"
        port = 2525
        sender = "aenode@example.org"
        recipients = ["ic@example.org"]
        [alerts.hl7]
        host = "127.0.0.1"
        port = 2575
        """,
    )
    config = load_config(path)
    assert config.node.port == 11199
    assert [s.ae_title for s in config.sources] == ["CT1", "CT2"]
    assert config.destinations[0].port == 4242
    assert config.alerts.smtp is not None and config.alerts.smtp.recipients == ["ic@example.org"]
    assert config.alerts.hl7 is not None and config.alerts.hl7.port == 2575
    # The rendered effective configuration is itself valid TOML that loads to the same thing.
    assert parse_config(tomllib.loads(render_toml(config))) == config


def test_env_variable_is_second_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(write(tmp_path, "[node]\nport = 12000\n")))
    assert load_config(None).node.port == 12000


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[node]\nport = 70000\n", "node.port", "65535"),
        ("[node]\nprot = 1\n", "node.prot", "unknown key"),
        ("[nodes]\nport = 1\n", "nodes", "unknown key"),
        ('[node]\nae_title = "WAY_TOO_LONG_AE_TITLE"\n', "node.ae_title", "1-16"),
        ('[[destinations]]\nname = "p"\nae_title = "A"\nhost = "h"\n', "destinations[0].port", "required"),
        ("[stability]\nquiet_seconds = -1\n", "stability.quiet_seconds", "greater than 0"),
        ('[alerts.webhook]\nurl = "ftp://x"\n', "alerts.webhook.url", "pattern"),
        ('[model]\nproviders = ["tpu"]\n', "model.providers[0]", "cuda"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert any(p.startswith(f"{key}:") and words in p for p in info.value.problems), info.value.problems


def test_duplicate_destination_names_refused() -> None:
    dest = {"ae_title": "A", "host": "h", "port": 1}
    with pytest.raises(ConfigError, match="duplicate name"):
        parse_config({"destinations": [{"name": "p", **dest}, {"name": "p", **dest}]})


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[node\n"))
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "absent.toml")


def test_config_check_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, '[node]\nport = 11200\n[alerts.webhook]\nurl = "http://127.0.0.1:1/x"\ninsecure = true\nsecret = "s3cret"\n')
    assert main(["config", "check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "port = 11200" in out and "s3cret" not in out and "********" in out
    bad = tmp_path / "bad.toml"
    bad.write_text("[web]\nport = 0\n")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "web.port" in err and str(bad) in err
