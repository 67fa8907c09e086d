"""The record of every AI result and every radiologist correction (SQLAlchemy; SQLite by default,
PostgreSQL by URL). Feeds the AI worklist, prior lookup for growth, per-site performance and drift."""

from .store import ResultStore, urgency_rank

__all__ = ["ResultStore", "urgency_rank"]
