"""The DuckDB store: the connection, the schema and its numbered migrations, read-only user queries (docs/store.md)."""
