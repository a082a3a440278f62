"""The benchmark's tasks: they do nothing, so what is measured is the queue."""


def noop(job):
    pass


noop2 = noop3 = noop
