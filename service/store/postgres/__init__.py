"""The store on PostgreSQL (asyncpg): the same tables and transitions as `sqlite/`, for replicas."""
