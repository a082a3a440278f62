"""django-db-queue's 0004 (see 0001_initial): state labels, and workspace as jsonb.

On PostgreSQL the AlterField of workspace from TextField to JSONField runs
``ALTER COLUMN workspace TYPE jsonb USING workspace::jsonb``: the JSON text that
jsonfield (1.x) stored becomes the same value, and NULL stays NULL.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0003_auto_20180713_1000"),
    ]

    operations = [
        migrations.AlterField(
            model_name="job",
            name="state",
            field=models.CharField(
                choices=[
                    ("NEW", "New"),
                    ("READY", "Ready"),
                    ("PROCESSING", "Processing"),
                    ("FAILED", "Failed"),
                    ("COMPLETE", "Complete"),
                ],
                db_index=True,
                default="NEW",
                max_length=20,
            ),
        ),
        migrations.AlterField(
            model_name="job",
            name="workspace",
            field=models.JSONField(null=True),
        ),
    ]
