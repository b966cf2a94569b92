"""The controller's store: repositories over SQLAlchemy that return frozen views.

SQLite by default, PostgreSQL by URL (`postgresql+psycopg://...`), the same schema through
Alembic migrations (controller/store/migrations/). `Store` opens the engine and holds the
repositories (`store.repos.groups`, `.rollouts`, `.desired`, `.power`, `.devices`,
`.retention`); ingest writes through `Store.apply`.
"""

from controller.store.core import (
    ApplyResult,
    DeviceCertRow,
    DeviceRow,
    DeviceView,
    EnrollTokenRow,
    Ingested,
    NoDatabaseError,
    Store,
    StoreError,
    normalise_url,
    open_existing,
)

__all__ = ["ApplyResult", "DeviceCertRow", "DeviceRow", "DeviceView", "EnrollTokenRow", "Ingested",
           "NoDatabaseError", "Store", "StoreError", "normalise_url", "open_existing"]
