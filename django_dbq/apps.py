from __future__ import annotations

from django.apps import AppConfig


class DjangoDbqConfig(AppConfig):
    name = "django_dbq"
    verbose_name = "Job queue"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_dbq import checks  # noqa: F401  (registers the system checks)
