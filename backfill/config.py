"""Typed settings, decoded and validated once at the edge (CLI flags over a TOML file).

Deeper code receives a `Settings` and never reads the environment or argv. The API key is
not a setting: it travels separately as a `Secret` so that no repr, report or checkpoint of
the settings can ever contain it.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

from backfill.errors import UsageError
from backfill.privacy.settings import PrivacySettings, parse_privacy
from backfill.schema import Kind, Rules
from backfill.shards import Shard
from backfill.targets import target_for

DEFAULT_ENDPOINT = "https://api.askmiso.com"
MiB = 1024 * 1024


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything a run needs except the API key. Field names are the flag names."""

    inputs: list[str] = []
    kind: Kind = "interactions"
    operation: Literal["upload", "delete"] = "upload"  # delete: inputs are ids
    wait_tasks: bool = False  # products/users: read each upload's task status for errors
    endpoint: str = DEFAULT_ENDPOINT
    state_dir: str = ".backfill"
    dead_letter: str | None = None  # default: <state_dir>/dead-letter.jsonl
    report: str | None = None
    # batching
    batch_size: int | None = None  # default per kind, see DEFAULT_BATCH_SIZE
    max_batch_bytes: int = 5 * MiB
    max_line_bytes: int = 1 * MiB
    # sending
    concurrency: int = 8
    request_timeout: float = 60.0
    connect_timeout: float = 10.0
    key_in_query: bool = False
    server_dry_run: bool = False
    dry_run: bool = False
    # retries
    max_attempts: int = 10
    max_retry_seconds: float = 600.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    # validation
    allow_missing_timestamp: bool = False
    allow_anonymous: bool = False
    since: datetime | None = None
    until: datetime | None = None
    max_invalid_ratio: float = 0.5
    invalid_ratio_window: int = 10_000
    max_rejected_ratio: float = 0.5  # of the records sent, refused by the server: stop above
    rejected_ratio_window: int = 1_000  # records sent before that share is judged
    # resume and shutdown
    ambiguous: Literal["resend", "skip"] = "resend"
    drain_timeout: float = 30.0
    restart: bool = False
    yes: bool = False
    force: bool = False
    # progress
    progress: Literal["auto", "bar", "log", "off"] = "auto"
    progress_interval: float = 0.0  # 0 = 1 s on a terminal, 10 s in a log
    # adaptive concurrency, rate caps and metrics (issue 15); `--concurrency auto` sets the mode
    concurrency_mode: Literal["fixed", "auto"] = "fixed"
    max_concurrency: int = 64  # auto: the limit never grows past it (workers, connections)
    initial_concurrency: int = 4  # auto: where the limit starts
    max_records_per_second: float | None = None  # for the whole command
    max_requests_per_second: float | None = None
    metrics_port: int | None = None  # Prometheus /metrics on 127.0.0.1 (0: any free port)
    metrics_textfile: str | None = None  # written every METRICS_INTERVAL s and at exit
    # logs not in Miso's shape: the [mapping] table of the config file (see backfill.mapping)
    mapping: dict[str, Any] | None = None
    config_file: str | None = None  # where the settings came from, for error messages
    # pseudonymized ids, truncated IPs, PII scrubbing: the [privacy] table (backfill.privacy)
    privacy: PrivacySettings | None = None
    # where the key comes from (never the key itself)
    api_key_env: str = "MISO_API_KEY"
    api_key_file: str | None = None
    # scale out (see backfill.shards and backfill.parallel)
    shard: Shard | None = None  # this run loads only the inputs of this shard
    processes: int = 1  # worker processes on this machine; budgets are split among them
    # follow the inputs as they grow after the history is loaded (see backfill.follow)
    follow: bool = False
    linger: float = 1.0  # --follow: seconds a partial batch waits for more records
    poll_interval: float = 0.25  # --follow: seconds between looks for new bytes and files
    idle_timeout: float = 60.0  # --follow: seconds without growth before a file is done

    @property
    def effective_batch_size(self) -> int:
        """The contract's recommendation: 10,000 interactions, 100 products or users or ids."""
        return self.batch_size or target_for(self.kind, self.operation).default_batch

    @property
    def max_in_flight(self) -> int:
        """Requests that may ever be in flight: workers, connections and the read-ahead."""
        return self.max_concurrency if self.concurrency_mode == "auto" else self.concurrency

    @property
    def dead_letter_path(self) -> Path:
        return (
            Path(self.dead_letter)
            if self.dead_letter
            else Path(self.state_dir) / "dead-letter.jsonl"
        )

    @property
    def rules(self) -> Rules:
        return Rules(
            require_timestamp=not self.allow_missing_timestamp,
            require_identity=not self.allow_anonymous,
            since=self.since,
            until=self.until,
        )

    def check(self) -> None:
        """Cross-field checks msgspec cannot express; raises UsageError."""
        positive = {
            "concurrency": self.concurrency,
            "max_batch_bytes": self.max_batch_bytes,
            "max_line_bytes": self.max_line_bytes,
            "max_attempts": self.max_attempts,
            "effective batch_size": self.effective_batch_size,
            "request_timeout": self.request_timeout,
            "processes": self.processes,
        }
        for name, value in positive.items():
            if value <= 0:
                raise UsageError(f"{name} must be positive, got {value}")
        if not 0.0 <= self.max_invalid_ratio <= 1.0:
            raise UsageError(
                f"max_invalid_ratio must be between 0 and 1, got {self.max_invalid_ratio}"
            )
        if not 0.0 <= self.max_rejected_ratio <= 1.0:
            raise UsageError(
                f"max_rejected_ratio must be between 0 and 1, got {self.max_rejected_ratio}"
            )
        for name, moment in (("since", self.since), ("until", self.until)):
            if moment is not None and moment.tzinfo is None:
                raise UsageError(f"--{name} needs a time zone, e.g. 2026-06-01T00:00:00Z")
        if self.since and self.until and self.since >= self.until:
            raise UsageError("--since must be earlier than --until")
        self._check_limits()
        self._check_follow()
        if not self.endpoint.startswith(("http://", "https://")):
            raise UsageError(f"--endpoint must be an http(s) URL, got {self.endpoint!r}")
        # the base URL; "https://api.askmiso.com/v1" is a common way to write it too
        self.endpoint = self.endpoint.rstrip("/").removesuffix("/v1")

    def _check_limits(self) -> None:
        """--max-concurrency, --initial-concurrency, the rate caps and --metrics-port."""
        if self.processes > 1 and (self.metrics_port is not None or self.metrics_textfile):
            # each worker would serve or write its own share under one name
            raise UsageError(
                "--metrics-port and --metrics-textfile work with one process only for now: "
                "drop --processes, or run one process per shard (--shard) with its own metrics"
            )
        if self.max_concurrency < 1:
            raise UsageError(f"--max-concurrency must be at least 1, got {self.max_concurrency}")
        if not 1 <= self.initial_concurrency <= self.max_concurrency:
            raise UsageError(
                f"--initial-concurrency must be between 1 and --max-concurrency "
                f"({self.max_concurrency}), got {self.initial_concurrency}"
            )
        for name, rate in (
            ("max-records-per-second", self.max_records_per_second),
            ("max-requests-per-second", self.max_requests_per_second),
        ):
            if rate is not None and not (math.isfinite(rate) and rate > 0):
                raise UsageError(f"--{name} must be a positive number, got {rate}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise UsageError(f"--metrics-port must be a port number, got {self.metrics_port}")

    def _check_follow(self) -> None:
        """--follow reads local interaction logs in one process (see README, --follow)."""
        for name, value in (
            ("linger", self.linger),
            ("poll-interval", self.poll_interval),
            ("idle-timeout", self.idle_timeout),
        ):
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"--{name} must be a positive number of seconds, got {value}")
        if not self.follow:
            return
        if self.kind != "interactions" or self.operation != "upload":
            raise UsageError(
                "--follow loads interactions only: products and users are deduplicated over "
                "the whole input before the first batch, which a growing input never allows"
            )
        if self.processes > 1:
            raise UsageError(
                "--follow works with one process: drop --processes (a followed site writes "
                "far less than one process sends), or split the inputs with --shard"
            )
        remote = [i for i in self.inputs if i.startswith(("s3://", "gs://"))]
        if remote:
            raise UsageError(
                f"--follow watches local files only, not {remote[0]}: objects in a bucket "
                "do not grow; load them without --follow and rerun to pick up new ones"
            )


def concurrency_words(values: dict[str, Any]) -> None:
    """`concurrency = "auto"` (flag or file) is the adaptive mode; a number is a fixed limit."""
    if values.get("concurrency") == "auto":
        del values["concurrency"]
        values["concurrency_mode"] = "auto"
    elif "concurrency" in values and "concurrency_mode" not in values:
        values["concurrency_mode"] = "fixed"


def load_settings(config_file: str | None, overrides: dict[str, Any]) -> Settings:
    """Settings from an optional TOML file, then flags (non-None overrides) on top."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(_read_toml(config_file))
        _check_keys(config_file, values)
        if isinstance(values.get("privacy"), dict):  # its own messages, e.g. for a key in it
            values["privacy"] = parse_privacy(values["privacy"], config_file)
        concurrency_words(values)
        values["config_file"] = config_file
    flags = {k: v for k, v in overrides.items() if v is not None}
    concurrency_words(flags)  # a flag's number overrides a file's "auto", and the reverse
    values.update(flags)
    try:
        settings = msgspec.convert(values, Settings, str_keys=True)
    except msgspec.ValidationError as exc:
        where = f"{config_file}: " if config_file else ""
        raise UsageError(f"{where}{_plain_path(str(exc))}") from None
    settings.check()
    return settings


# keys people put a key under; the value is never echoed, only where it should go instead
KEY_SETTINGS = frozenset({"api_key", "key", "miso_api_key", "secret_key", "apikey", "x_api_key"})


def _check_keys(config_file: str, values: dict[str, Any]) -> None:
    """An unknown key is a typo or a secret: say which setting was meant, or where keys go."""
    known = {f.name for f in msgspec.structs.fields(Settings)}
    for name in values:
        if name in KEY_SETTINGS:
            raise UsageError(
                f"{config_file}: `{name}`: the API key is never read from a config file "
                "(config files get shared and committed). Remove it, and set the environment "
                "variable MISO_API_KEY (or name another one with `api_key_env`), or use "
                "--api-key-file PATH"
            )
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise UsageError(f"{config_file}: unknown setting `{name}`{hint}")


def default_help(name: str) -> str:
    """'(default X)' for a flag, from the Settings default itself so help never drifts."""
    return f"(default {_DEFAULT_WORDS.get(name) or _plain_value(_defaults()[name])})"


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in msgspec.structs.fields(Settings)}


def _plain_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and value >= MiB and value % MiB == 0:
        return f"{value} = {value // MiB} MiB"
    return str(value)


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    # Settings may sit at the top level or in a [run] table; [mapping] and [privacy] are kept
    # whole, and other tables (e.g. [server] for `backfill serve`) are not the run's business.
    run = data.pop("run", {})
    flat = {k: v for k, v in data.items() if not isinstance(v, dict) or k in RUN_TABLES}
    flat.update(run)
    return {k.replace("-", "_"): v for k, v in flat.items()}


RUN_TABLES = frozenset({"mapping", "privacy"})


def _plain_path(message: str) -> str:
    """msgspec says "... - at `$.batch_size`"; users think in setting names."""
    head, sep, path = message.partition(" - at `$.")
    return f"{path.rstrip('`')}: {head}" if sep else message


_DEFAULT_WORDS: dict[str, str] = {
    "batch_size": f"{Settings(kind='interactions').effective_batch_size}; "
    f"{Settings(kind='products').effective_batch_size} for products, users and deletes",
    "dead_letter": "<state-dir>/dead-letter.jsonl",
    "progress_interval": "0: 1 s on a terminal, 10 s in a log",
    "max_records_per_second": "no cap",
    "max_requests_per_second": "no cap",
    "metrics_port": "off",
    "metrics_textfile": "off",
}


class Secret:
    """The API key. Its repr and str never reveal it; only `reveal()` does, at the wire.
    `source` says where it came from ("$MISO_API_KEY"), for messages that must name it."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str = "$MISO_API_KEY") -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        return text.replace(self._value, "***") if self._value else text

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


KEY_FILE_HELP = "read the key from the first line of this file instead of $MISO_API_KEY"


def load_secret(settings: Settings, environ: dict[str, str] | None = None) -> Secret:
    """The key from a file (first line) or the environment; never from a flag or the config."""
    env = os.environ if environ is None else environ
    if settings.api_key_file:
        try:
            key = Path(settings.api_key_file).read_text(encoding="utf-8").strip().splitlines()[0]
        except (OSError, IndexError):
            raise UsageError(f"cannot read an API key from {settings.api_key_file}") from None
        return Secret(key.strip(), f"--api-key-file {settings.api_key_file}")
    key = env.get(settings.api_key_env, "").strip()
    if not key and not settings.dry_run:
        raise UsageError(
            f"no API key: set the environment variable {settings.api_key_env} "
            "(or --api-key-file PATH) to your Miso secret key"
        )
    return Secret(key, f"${settings.api_key_env}")
