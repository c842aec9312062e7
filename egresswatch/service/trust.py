"""The files the daemon trusts or writes: its config, its database and its outputs.

The config file and the database (and every directory above them) must not be
writable by users other than root; every file the daemon writes (status file,
``--record-procs``, ``daemon.jsonl_path``) must be in a directory only root can
write (:mod:`egresswatch.safefiles`). Each refusal is one line naming the file.
"""

from __future__ import annotations

from pathlib import Path

from egresswatch.config import Config, load_config
from egresswatch.errors import ConfigError, PermissionProblem
from egresswatch.safefiles import make_dir, require_trusted


def trusted_file_problems(path: Path) -> list[str]:
    """Ways users other than root could change ``path`` (a config file or the
    database): writable file or directories, foreign owner, symlinked file."""
    from egresswatch.store.files import check_permissions

    return check_permissions(path)


def load_trusted_config(path: Path | None) -> Config:
    """The config at ``path`` (or the default), validated allowlist entries
    included, so that an error names the file (start and reload); refused when
    users other than root could change it."""
    from egresswatch.judge.policy import validate

    cfg = load_config(path)
    try:
        validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{cfg.source or 'built-in defaults'}: {exc}") from None
    if cfg.source is not None:
        problems = trusted_file_problems(cfg.source)
        if problems:
            raise PermissionProblem(f"refusing to use config {cfg.source}: {problems[0]}")
    return cfg


def require_trusted_database(db: Path) -> None:
    problems = trusted_file_problems(db)
    if problems:
        raise PermissionProblem(f"refusing to use database {db}: {problems[0]}")


def check_outputs(status_path: Path, record_procs: Path | None, cfg: Config) -> None:
    """Every file the daemon writes must be in a directory only root can
    write (no planted symlink or hard link can redirect it)."""
    make_dir(status_path.parent)
    require_trusted(status_path, "status file")
    if record_procs is not None:
        require_trusted(record_procs, "--record-procs file")
    if cfg.daemon.jsonl_path is not None:
        require_trusted(cfg.daemon.jsonl_path, "daemon.jsonl_path")
