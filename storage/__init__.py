"""The only code that knows paths and file formats: Parquet tables, DuckDB views, manifests."""
