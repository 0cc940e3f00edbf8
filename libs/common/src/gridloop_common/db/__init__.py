"""asyncpg pools and the migration runner."""

from gridloop_common.db.migrations import (
    Migration,
    MigrationError,
    apply_migrations,
    load_migrations,
    migrate_database,
)
from gridloop_common.db.pool import database_ready, ensure_database, open_pool

__all__ = [
    "Migration",
    "MigrationError",
    "apply_migrations",
    "database_ready",
    "ensure_database",
    "load_migrations",
    "migrate_database",
    "open_pool",
]
