"""django-dbq: an event-sourced, database-backed job queue for Django on PostgreSQL."""

__version__ = "0.1.0"
