"""End-to-end encrypted backups: stream format, keys, jobs."""
