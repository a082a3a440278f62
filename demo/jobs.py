"""The demo's tasks: a three-step cat import and a one-step newsletter."""

import logging

logger = logging.getLogger("demo")

CATS = {"shelter-a": ["Tom", "Felix", "Garfield"], "shelter-b": ["Nermal"], "shelter-c": []}


def stamp_request(job):
    job.workspace.setdefault("requested_by", "demo")


def fetch_cats(job):
    shelter = job.workspace["shelter"]
    if not CATS[shelter]:
        raise LookupError(f"{shelter} has no cats today")
    job.workspace["cats"] = CATS[shelter]


def weigh_cats(job):
    job.workspace["weights"] = {cat: 3 + len(cat) / 2 for cat in job.workspace["cats"]}


def report(job):
    job.workspace["total_kg"] = sum(job.workspace["weights"].values())


def apologise(job, exception):
    logger.warning("import of %s failed: %s", job.workspace["shelter"], exception)


def send_newsletter(job):
    job.workspace["sent"] = True
