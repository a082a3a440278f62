"""@task functions for the LedgerBackend tests."""

try:
    from django.tasks import task
except ImportError:
    from django_tasks import task


@task
def add(a, b):
    return a + b


@task(priority=5, queue_name="tasks")
def shout(word, *, times=1):
    return {"said": word.upper() * times}


@task
def explode():
    raise RuntimeError("task exploded")


@task(takes_context=True)
def with_context(context, value):
    return {"attempt": context.attempt, "value": value}


@task
async def async_double(value):
    return value * 2
