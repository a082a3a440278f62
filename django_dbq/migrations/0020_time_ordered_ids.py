"""Time-ordered job ids (django_dbq/ids.py): new jobs get UUIDs of version 7.

The default is Python's (Job.id), so nothing changes in the database: jobs of
earlier releases keep their ids, and processes of the previous release go on
creating version 4 ids, which the ledger takes as before.
"""

from django.db import migrations, models

import django_dbq.ids


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0019_hot_set"),
    ]

    operations = [
        migrations.AlterField(
            model_name="job",
            name="id",
            field=models.UUIDField(
                default=django_dbq.ids.uuid7, editable=False, primary_key=True, serialize=False
            ),
        ),
    ]
