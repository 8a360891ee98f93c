"""The one job engine behind ``heatmap`` and ``bulk``: discover -> plan -> process -> journal.

    job = Job.prepare(["photos/"], "out/", model, OutputSpec.make(depth="npy"))  # OUTPUT locked
    summary = job.run(LocalRunner(hm, job.spec, job.store, job.digest, workers=2))  # and released

Torch-free and Ray-free: ``bulk`` runs ``LocalRunner`` inside a Ray worker on every node.
"""

from .inputs import discover
from .job import Job, Summary, job_record
from .journal import JOB_FILE, MANIFEST, JobError, read_manifest
from .local import LocalRunner
from .plan import Item
from .process import process
from .spec import OutputSpec, OutputSpecError
from .store import Store, StoreError

__all__ = ["JOB_FILE", "MANIFEST", "Item", "Job", "JobError", "LocalRunner", "OutputSpec", "OutputSpecError",
           "Store", "StoreError", "Summary", "discover", "job_record", "process", "read_manifest"]
