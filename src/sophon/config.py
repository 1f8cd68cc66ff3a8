"""All configuration in one place: environment variables prefixed ``SOPHON_``."""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_data_dir() -> Path:
    # Root's home is closed to other users, and sandboxes run as an unprivileged
    # host uid that must reach its own files: a root server keeps data in /var/lib.
    if os.geteuid() == 0:
        return Path("/var/lib/sophon")
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "sophon"


class BoxLimits(BaseSettings):
    """Resource limits applied to every box (per box, not per exec)."""

    model_config = SettingsConfigDict(env_prefix="SOPHON_BOX_", extra="ignore")

    memory_mb: int = Field(512, ge=16, description="memory limit (cgroup), MiB")
    cpus: float = Field(1.0, gt=0, description="CPU quota, in cores")
    pids: int = Field(256, ge=8, description="maximum number of processes")
    # The most a session may ask for (images/sizing.py); 0: the largest base default.
    memory_max_mb: int = Field(0, ge=0)
    cpus_max: float = Field(0.0, ge=0)
    pids_max: int = Field(0, ge=0)
    tmp_mb: int = Field(64, ge=1, description="size of the private /tmp, MiB")
    output_cap_bytes: int = Field(1024 * 1024, ge=1024, description="per stream, per exec")


class Price(BaseModel):
    """US dollars per million tokens."""

    input: float
    output: float
    cache_read: float
    cache_write: float


class ModelSettings(BaseSettings):
    """The model provider, the aliases users pick from, prices, and budgets."""

    model_config = SettingsConfigDict(env_prefix="SOPHON_", extra="ignore",
                                      populate_by_name=True)

    # The provider's own variable names work, so an existing setup needs no change.
    anthropic_api_key: str | None = Field(
        None, validation_alias=AliasChoices("SOPHON_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"))
    anthropic_base_url: str | None = Field(
        None, validation_alias=AliasChoices("SOPHON_ANTHROPIC_BASE_URL", "ANTHROPIC_BASE_URL"))
    model_aliases: dict[str, str] = {
        "opus": "claude-opus-4-5",
        "sonnet": "claude-sonnet-4-5",
        "haiku": "claude-haiku-4-5",
    }
    prices: dict[str, Price] = {
        "claude-opus-4-5": Price(input=5, output=25, cache_read=0.5, cache_write=6.25),
        "claude-sonnet-4-5": Price(input=3, output=15, cache_read=0.3, cache_write=3.75),
        "claude-haiku-4-5": Price(input=1, output=5, cache_read=0.1, cache_write=1.25),
    }
    # Used for a model id missing from the table: priced as the dearest, never as free.
    default_price: Price = Price(input=5, output=25, cache_read=0.5, cache_write=6.25)
    max_tokens: int = Field(8192, ge=1)
    # Tokens (input + output) a user may spend across all sessions; 0 = no limit.
    user_token_budget: int = Field(0, ge=0)
    approval_webhook_timeout: float = Field(10.0, gt=0)

    def resolve(self, model: str) -> str:
        return self.model_aliases.get(model, model)

    def price(self, model: str) -> Price:
        return self.prices.get(model, self.default_price)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SOPHON_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    # Where clients reach this server (behind a proxy, its public https address): the
    # base of the URLs it gives out, such as signed file URLs. Default http://host:port.
    # Never taken from a request's Host header, which the caller chooses.
    public_url: str | None = Field(None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    log_level: str = "info"
    # A cluster (nodes sharing one PostgreSQL database, sophon/cluster/): where other
    # nodes reach this one (default: base_url), and how often it says it is alive; a
    # node silent for node_lease_seconds is taken for dead.
    node_url: str | None = Field(None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    node_heartbeat_seconds: float = Field(5.0, gt=0)
    node_lease_seconds: float = Field(15.0, gt=0)
    # The built dashboard served at `/`; None: the repository's ui/dist (`make ui`).
    ui_dir: Path | None = None

    # Host uids for boxes when the server runs as root: each box gets its own from
    # [box_uid_first, box_uid_first + box_uid_count). Never root: a box's own uid inside
    # its user namespace maps to this one.
    box_uid_first: int = Field(60000, ge=1000)
    box_uid_count: int = Field(5000, ge=1)
    # The hard disk quota of a box's /workspace and /home/user together (root servers).
    box_disk_mb: int = Field(2048, ge=16)
    # The most a user may ask for: a session's disk_mb, a volume's size_mb. Default (0):
    # box_disk_mb, so users get no more than the default unless the admin says so.
    box_disk_max_mb: int = Field(0, ge=0)
    box_backend: str = "bwrap"
    box_python: str = "/usr/bin/python3"
    box_pool_size: int = Field(2, ge=0, description="started, empty boxes kept ready")
    # Admission of box starts (box/manager.py). The memory limits of the running boxes may
    # add up to at most box_memory_budget_mb (default: twice the machine's memory, since
    # most boxes use a fraction of their limit and idle ones are stopped); at most
    # box_start_concurrency boxes start at once (default: twice the CPUs), the others
    # wait in line up to box_start_wait_seconds. Past either, a start is a 503.
    box_memory_budget_mb: int | None = Field(None, ge=0)
    box_start_concurrency: int | None = Field(None, ge=1)
    box_start_wait_seconds: float = Field(30.0, ge=0)
    # A thread unused for this long is deleted with its files, uid and disk (0: never);
    # execution records older than this are deleted (0: kept for ever). Checked every
    # housekeeping_seconds.
    thread_expiry_days: float = Field(30.0, ge=0)
    execution_retention_days: float = Field(30.0, ge=0)
    housekeeping_seconds: float = Field(3600.0, gt=0)
    thread_idle_seconds: float = 600.0
    session_idle_seconds: float = 7200.0
    # A box with a process still running but no request for this long is stopped anyway
    # (its processes end; the next request starts it over the same files). 0: never.
    box_max_unattended_seconds: float = Field(7200.0, ge=0)
    # Per-user limits (sophon/quotas.py); 0 = no limit. Boxes awake: threads, sessions
    # and one-off executions together. Disk: the sizes of the user's session and thread
    # disks and volumes added up (what they may grow to), checked when one is made.
    # Events: what the user's sessions append a minute; past it, new work (a session, an
    # exec) waits, while what runs goes on.
    user_max_boxes: int = Field(20, ge=0)
    user_max_concurrent_executions: int = Field(16, ge=0)
    user_max_disk_mb: int = Field(262144, ge=0)  # 256 GiB: 128 disks of the default size
    user_max_events_per_minute: int = Field(12000, ge=0)
    sse_heartbeat_seconds: float = 15.0
    # A session's file_change events (sessions/file_changes.py): a burst of
    # file_changes_burst, then file_changes_per_second; beyond that, the changes of the
    # next file_changes_window_seconds are logged as one file_changes_coalesced event.
    # Diffs: each cut at file_diff_max_bytes; together a burst of file_diff_burst_bytes,
    # then file_diff_bytes_per_second, beyond which a change is logged without its diff.
    file_changes_per_second: float = Field(10.0, gt=0)
    file_changes_burst: int = Field(100, ge=1)
    file_changes_window_seconds: float = Field(5.0, gt=0)
    file_diff_max_bytes: int = Field(64 * 1024, ge=1024)
    file_diff_bytes_per_second: int = Field(64 * 1024, ge=0)
    file_diff_burst_bytes: int = Field(1024 * 1024, ge=0)
    # If set, the only host directories a git starter may clone from by local path or
    # file:// URL. Empty: any directory that other users may read.
    git_local_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)

    # Outbound webhooks, execution and approval (sophon.webhooks): `host:port`s that may
    # be sent to over plain http and although they are loopback or private addresses
    # (tests, private networks); comma-separated. The delays before each retry of a failed
    # execution webhook delivery.
    webhook_allow_insecure_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_retry_delays: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [0.5, 1.0, 2.0, 4.0])
    webhook_timeout_seconds: float = Field(10.0, gt=0)

    # The egress door (sophon/egress): the one way out of a box. `address:port`s in the
    # refused set (loopback, private, link-local, ...) that boxes may reach anyway (test
    # hosts, a private mirror); the widest rules a user may add to a session's list
    # (empty: any public host, never `*`); rules that refuse whatever a list allows; what
    # the execution API's threads reach ("registries": the package registries of every
    # base plus their key's connectors, "public": every public address, "off": nothing).
    egress_allow_private: Annotated[list[str], NoDecode] = Field(default_factory=list)
    egress_ceiling: Annotated[list[str], NoDecode] = Field(default_factory=list)
    egress_deny: Annotated[list[str], NoDecode] = Field(default_factory=list)
    egress_execute: Literal["registries", "public", "off"] = "registries"
    # The port of the door inside every box (127.0.0.1), the connections one box may
    # have open through it, and how long a box may take to send a request's head, a
    # host to accept a connection, and a connection to stay silent both ways.
    egress_box_port: int = Field(3128, ge=1, le=65535)
    egress_max_connections_per_box: int = Field(256, ge=1)
    egress_head_timeout_seconds: float = Field(30.0, gt=0)
    egress_connect_timeout_seconds: float = Field(10.0, gt=0)
    egress_idle_timeout_seconds: float = Field(600.0, gt=0)
    # How long a connection waits for a person to answer a network approval.
    egress_approval_timeout_seconds: float = Field(120.0, gt=0)
    # A CA the door trusts, beside the system's, when it checks a connector's real host
    # (a private GitHub Enterprise, a test server), and the hosts a github connector is
    # for (GitHub Enterprise Server: its own).
    egress_trust_ca: Path | None = None
    # What makes Node's own fetch use the door in boxes on Node before 24 (installed by
    # scripts/box-tools; boxes see /usr read-only, so it lives there).
    box_node_dir: Path = Path("/usr/local/lib/sophon-node")
    # The Claude Code CLI every box gets (scripts/box-tools; under /usr, which boxes see;
    # `bin/claude` goes on every exec's PATH). Elsewhere or missing: no claude-code runtime.
    box_claude_dir: Path = Path("/usr/local/lib/sophon-claude")
    # A session's box runs on its base's image (sophon/images: a Debian root built with
    # mmdebstrap, squashfs, mounted read-only), or with "host" on the host's own /usr.
    # Images need root (a loop mount), mmdebstrap and mksquashfs; without them the server
    # says why at start and uses the host's /usr.
    images: Literal["debian", "host"] = "debian"
    # Where images are kept: content-addressed and read-only, so every server on the
    # machine (each data directory, the tests', the acceptance stories') shares them and
    # builds each once, as a container engine keeps one image store per machine.
    images_dir: Path = Path("/var/lib/sophon/images")
    image_build_timeout: float = Field(900.0, gt=0)
    # A built image's size at most (a user's build past it fails), and how many images of
    # their own each user may have (0: no limit).
    image_max_mb: int = Field(8192, ge=64)
    # Each base's box defaults over the SOPHON_BOX_* ones (images/sizing.py), as JSON:
    # {"python": {"memory_mb": 2048, "cpus": 2, "pids": 512, "disk_mb": 4096}, ...}.
    base_limits: dict[str, dict[str, float]] = Field(default_factory=dict)
    user_max_images: int = Field(20, ge=0)
    # A claude-code session's CLI stays up between turns for this long (then it exits and
    # the box may sleep; the next turn resumes the conversation). A turn whose CLI prints
    # nothing for claude_code_stall_seconds, with no approval pending, is a hung CLI: it is
    # stopped and the turn ends with a session_error (its Bash tool runs 10 minutes at most).
    claude_code_keep_seconds: float = Field(600.0, ge=0)
    # A session terminal with nobody watching keeps running this long (a page reload
    # attaches to it again), then its shell is ended.
    terminal_keep_seconds: float = Field(600.0, ge=0)
    claude_code_stall_seconds: float = Field(900.0, gt=0)
    # A session's MCP server (agent/mcp_servers.py) that has not answered its handshake
    # and tool list in this long is left out of the turn; a tool call that has not
    # answered in mcp_call_seconds is a tool error.
    mcp_start_seconds: float = Field(20.0, gt=0)
    mcp_call_seconds: float = Field(300.0, gt=0)
    # Files larger than this are left out of a session's checkpoints (a rewind leaves
    # them as they are): each checkpoint would otherwise keep another copy in .git.
    checkpoint_max_file_mb: float = Field(10.0, gt=0)
    # The checkpoints a session keeps: past this many, the oldest are removed as a new
    # one is taken (its event names them). 0: all are kept.
    checkpoint_keep: int = Field(0, ge=0)
    egress_github_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["github.com", "api.github.com"])

    # Users (by name) who may read server-wide pages such as GET /metrics; `make run`
    # makes the user `admin`. Comma-separated.
    admin_users: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["admin"])

    idle_check_seconds: float = 15.0
    limits: BoxLimits = Field(default_factory=BoxLimits)
    models: ModelSettings = Field(default_factory=lambda: ModelSettings())

    @field_validator("git_local_roots", mode="before")
    @classmethod
    def _split_paths(cls, v: object) -> object:
        return [p for p in v.split(":") if p] if isinstance(v, str) else v

    @field_validator("webhook_allow_insecure_hosts", "webhook_retry_delays", "admin_users",
                     "egress_allow_private", "egress_ceiling", "egress_deny",
                     "egress_github_hosts", mode="before")
    @classmethod
    def _split_commas(cls, v: object) -> object:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'sophon.db'}"

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @field_validator("base_limits")
    @classmethod
    def _base_limits(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for base, limits in v.items():
            unknown = set(limits) - {"memory_mb", "cpus", "pids", "disk_mb"}
            if unknown:
                raise ValueError(f"SOPHON_BASE_LIMITS[{base!r}]: unknown limit(s) "
                                 f"{', '.join(sorted(unknown))}; the limits are memory_mb, "
                                 "cpus, pids and disk_mb")
            if any(value <= 0 for value in limits.values()):
                raise ValueError(f"SOPHON_BASE_LIMITS[{base!r}]: limits are positive")
        return v

    @property
    def disk_max_mb(self) -> int:
        return max(self.box_disk_max_mb, self.box_disk_mb)

    @property
    def memory_budget_mb(self) -> int:
        if self.box_memory_budget_mb is not None:
            return self.box_memory_budget_mb
        return 2 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20

    @property
    def start_concurrency(self) -> int:
        if self.box_start_concurrency is not None:
            return self.box_start_concurrency
        return 2 * len(os.sched_getaffinity(0))

    @property
    def boxes_dir(self) -> Path:
        return self.data_dir / "boxes"

    @property
    def node_key(self) -> str:
        """A short name for this node's own state in a data directory several nodes
        share ("" on SQLite, where the server is alone): from the address other nodes
        reach it at, so the same for every run of the node."""
        if not self.clustered:
            return ""
        url = (self.node_url or self.base_url).rstrip("/")
        return hashlib.sha256(url.encode()).hexdigest()[:8]

    @property
    def clustered(self) -> bool:
        """Whether other nodes may share this server's database and data directory."""
        return self.resolved_database_url.startswith("postgresql")

    def _node_local(self, name: str) -> Path:
        return self.data_dir / (f"{name}-{self.node_key}" if self.node_key else name)

    @property
    def spare_disks_dir(self) -> Path:
        return self._node_local("spare-disks")

    @property
    def runtime_dir(self) -> Path:
        """Sockets of this node's running boxes (node-local)."""
        return self._node_local("runtime")

    @property
    def staging_dir(self) -> Path:
        """Copies of clones this node is making (node-local)."""
        return self._node_local("staging")


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
