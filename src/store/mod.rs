//! PostGIS storage: connection, migrations, per-tile transactional writes.
