"""django-db-queue's first migration (Copyright (c) 2014, DabApps; BSD licence).

This and the five after it are django-db-queue's own migrations, under their
names, so that a database that ran some of them (1.x ran 0001 to 0003, 2.x 0001
to 0005) can run the rest; Django then uses them instead of
0001_squashed_0006_alter_job_state, which replaces them. Their operations are the
releases' own. 1.x created ``workspace`` with ``jsonfield.fields.JSONField``, a
TextField subclass, as 2.x and 3.x rewrote it here: a ``text`` column, which
0004 turns into ``jsonb``.
"""

import uuid

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Job",
            fields=[
                (
                    "id",
                    models.UUIDField(
                        serialize=False, editable=False, default=uuid.uuid4, primary_key=True
                    ),
                ),
                ("created", models.DateTimeField(db_index=True, auto_now_add=True)),
                ("modified", models.DateTimeField(auto_now=True)),
                ("name", models.CharField(max_length=100)),
                (
                    "state",
                    models.CharField(
                        db_index=True,
                        max_length=20,
                        default="NEW",
                        choices=[
                            ("NEW", "NEW"),
                            ("READY", "READY"),
                            ("PROCESSING", "PROCESSING"),
                            ("FAILED", "FAILED"),
                            ("COMPLETE", "COMPLETE"),
                        ],
                    ),
                ),
                ("next_task", models.CharField(max_length=100, blank=True)),
                ("workspace", models.TextField(null=True)),
                (
                    "queue_name",
                    models.CharField(db_index=True, max_length=20, default="default"),
                ),
            ],
            options={"ordering": ["-created"]},
        ),
    ]
