"""Tasks and hooks named in the test settings' JOBS."""


def task_one(job):
    job.workspace["one"] = True


def task_two(job):
    job.workspace["two"] = True


def creation_hook(job):
    job.workspace["hooked"] = True


def failing_creation_hook(job):
    raise RuntimeError("creation hook refused the job")
