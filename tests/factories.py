import factory

from django_dbq.models import Job


class JobFactory(factory.django.DjangoModelFactory):
    """Builds jobs through Job.objects.create, so the ledger trigger does the writing."""

    class Meta:
        model = Job

    name = "testjob"
