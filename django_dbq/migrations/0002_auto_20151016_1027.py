"""django-db-queue's 0002 (see 0001_initial): jobs ordered oldest first."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("django_dbq", "0001_initial"),
    ]

    operations = [
        migrations.AlterModelOptions(name="job", options={"ordering": ["created"]}),
    ]
