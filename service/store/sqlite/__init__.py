"""The store on SQLite: `store` (the queries), `writer` (the writer thread and its group commit),
`schema` (pragmas and migrations), `files` (the lock and the files' mode)."""
