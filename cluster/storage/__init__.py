"""A member's durable state: the WAL, snapshot files and the LMDB backend."""
