from __future__ import annotations

from pathlib import Path

import pytest

from backfill.config import Settings, load_secret, load_settings
from backfill.errors import UsageError

CONFIGS = sorted(Path(__file__).parent.parent.glob("configs/*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    settings = load_settings(str(path), {})
    assert settings.endpoint.startswith("http")


def test_flags_override_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('endpoint = "http://127.0.0.1:1"\nconcurrency = 3\n[run]\nbatch_size = 77\n')
    s = load_settings(str(cfg), {"concurrency": 5, "endpoint": None})
    assert (s.endpoint, s.concurrency, s.effective_batch_size) == ("http://127.0.0.1:1", 5, 77)


def test_endpoint_is_a_base_url() -> None:
    for given in (
        "https://api.askmiso.com",
        "https://api.askmiso.com/",
        "https://api.askmiso.com/v1/",
    ):
        assert load_settings(None, {"endpoint": given}).endpoint == "https://api.askmiso.com"


def test_bad_settings_name_the_setting(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('concurrency = "many"\n')
    with pytest.raises(UsageError, match=r"c.toml: concurrency: Expected `int`"):
        load_settings(str(cfg), {})
    cfg.write_text("concurency = 4\n")
    with pytest.raises(UsageError, match="concurency"):
        load_settings(str(cfg), {})
    with pytest.raises(UsageError, match="max_invalid_ratio"):
        load_settings(None, {"max_invalid_ratio": 2.0})


def test_a_misspelled_setting_gets_a_suggestion(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[run]\nconcurency = 4\n")
    with pytest.raises(UsageError) as exc:
        load_settings(str(cfg), {})
    assert str(exc.value) == f"{cfg}: unknown setting `concurency`; did you mean `concurrency`?"
    cfg.write_text("max-retry-secs = 4\n")  # dashes are read as underscores
    with pytest.raises(UsageError, match="did you mean `max_retry_seconds`"):
        load_settings(str(cfg), {})
    cfg.write_text("colour = 'red'\n")  # nothing close: no guess
    with pytest.raises(UsageError) as exc:
        load_settings(str(cfg), {})
    assert str(exc.value) == f"{cfg}: unknown setting `colour`"


@pytest.mark.parametrize("name", ["api_key", "key", "miso_api_key", "api-key", "secret_key"])
def test_a_key_in_a_config_file_points_to_where_keys_go(tmp_path: Path, name: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'endpoint = "http://127.0.0.1:9"\n{name} = "sk-live-do-not-print"\n')
    with pytest.raises(UsageError) as exc:
        load_settings(str(cfg), {})
    message = str(exc.value)
    assert message.startswith(f"{cfg}: `{name.replace('-', '_')}`: the API key is never read")
    assert "MISO_API_KEY" in message and "--api-key-file" in message
    assert "sk-live-do-not-print" not in message


def test_the_key_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    s = Settings()
    assert load_secret(s, {"MISO_API_KEY": "abc"}).reveal() == "abc"
    with pytest.raises(UsageError, match="MISO_API_KEY"):
        load_secret(s, {})
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    secret = load_secret(Settings(api_key_file=str(key_file)), {})
    assert secret.reveal() == "from-file" and "from-file" not in repr(secret) + str(secret)
