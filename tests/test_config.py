from __future__ import annotations

from pathlib import Path

import pytest

from backfill.cli import main
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


def test_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MISO_API_KEY", raising=False)
    assert main(["run", "x.jsonl", "--state-dir", str(tmp_path)]) == 2
    assert "no API key" in capsys.readouterr().err
    monkeypatch.setenv("MISO_API_KEY", "k")
    assert main(["run", str(tmp_path / "missing.jsonl"), "--state-dir", str(tmp_path)]) == 2
    assert "input not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["run", "--concurrency", "lots"])
    assert exc.value.code == 2


def test_an_unreadable_input_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISO_API_KEY", "k")
    # /proc/self/mem is a file that every read refuses with EIO, even for root
    code = main(
        ["run", "/proc/self/mem", "--state-dir", str(tmp_path), "--endpoint", "http://127.0.0.1:9"]
    )
    assert code == 2
    assert "cannot read input /proc/self/mem: Input/output error" in capsys.readouterr().err


async def test_one_process_per_state_dir(tmp_path: Path) -> None:
    from backfill.checkpoint import Checkpoint
    from backfill.errors import StateLocked
    from backfill.state import reset_state

    holder = await Checkpoint.open(tmp_path / "state")
    try:
        with pytest.raises(StateLocked, match=r"in use by another backfill process \(pid \d+\)"):
            await Checkpoint.open(tmp_path / "state")
        with pytest.raises(StateLocked):
            reset_state(Settings(state_dir=str(tmp_path / "state")))
    finally:
        await holder.close()
    reset_state(Settings(state_dir=str(tmp_path / "state")))  # free again
    assert not (tmp_path / "state" / "checkpoint.sqlite").exists()


def test_restart_needs_confirmation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISO_API_KEY", "k")
    log = tmp_path / "a.jsonl"
    log.write_text("")
    state = str(tmp_path / "state")
    code = main(
        ["run", str(log), "--state-dir", state, "--restart", "--endpoint", "http://127.0.0.1:9"]
    )
    assert code == 2 and "add --yes" in capsys.readouterr().err  # no terminal to ask on


async def test_an_unusable_state_dir_is_a_usage_error(tmp_path: Path) -> None:
    from backfill.checkpoint import Checkpoint

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UsageError, match=r"cannot use state dir .*file/state"):
        await Checkpoint.open(blocker / "state")
