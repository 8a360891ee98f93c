"""The Ray worker: one per node, running the job engine's ``LocalRunner`` on chunks of items.

A node's worker holds one ``DepthHeatmapper`` (one session, made once) and one pool of
whole-image threads, exactly what ``heatmap`` runs on one machine, so a node's throughput
is ``heatmap``'s less Ray's cost per chunk (a chunk carries tens of inputs, so that cost
is paid once per tens of images). Two chunks may run at once on a worker: the next starts
on the shared threads while the last images of the previous one finish, so no thread idles
at a chunk's end. Each chunk is a generator: a row goes back to the driver as soon as its
input is done, and a heartbeat (the runner's progress count) while nothing finishes, so the
driver can tell a long video from a worker hung in native code.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from typing import Iterator

from runtime.engine import Item, LocalRunner, OutputSpec, Store

# Fault injection for tests: a worker whose chunk holds an input whose name contains this
# exits at once, as a crash or the kernel's OOM killer would ("__init__": fails to start).
CRASH_ENV = "MIDAS_ONNX_TEST_CRASH_ON"
HEARTBEAT_S = 10.0


class NodeWorker:
    """Holds the session and the threads; ``run`` streams one chunk's rows."""

    def __init__(self, model: str, spec: OutputSpec, output: str, digest: str, threads: int,
                 input_size: int | None = None, engine: str = "onnxruntime") -> None:
        import ray

        from runtime import DepthHeatmapper

        self.crash_on = os.environ.get(CRASH_ENV)
        if self.crash_on == "__init__":
            raise RuntimeError("worker start failed (fault injected for tests)")
        os.environ["MIDAS_ONNX_NODE"] = ray.get_runtime_context().get_node_id()
        hm = DepthHeatmapper(model, threads=1, colormap=spec.colormap, input_size=input_size, engine=engine)
        self.runner = LocalRunner(hm, spec, Store(output), digest, workers=threads)
        self.stopping = threading.Event()
        # Tracebacks of inputs that failed go to a file on this node, written before the row
        # returns (Ray's own forwarding of worker output may not reach the driver before it
        # shuts down); failed rows name it.
        self.log = os.path.join(tempfile.gettempdir(), f"midas-bulk-worker-{os.getpid()}.log")
        handler = logging.FileHandler(self.log, delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger("midas_onnx.job").addHandler(handler)

    def run(self, items: list[Item], blobs: dict[str, bytes] | None = None) -> Iterator[dict]:
        if self.crash_on and any(self.crash_on in item.source for item in items):
            os._exit(17)  # fault injection: see CRASH_ENV
        for rows in self.runner.batches(items, blobs, self.stopping, idle=HEARTBEAT_S):
            if not rows:
                yield {"heartbeat": self.runner.progress}
            for row in rows:
                if row.pop("traceback_logged", False):
                    row["log"] = self.log
                yield row

    def stop(self) -> None:
        """Start no new input; the ones running finish and their rows still come back."""
        self.stopping.set()
