"""The dispatcher, by responsibility:

* ``leases``: which replica drives which run (claim, renew, hand over);
* ``dispatcher``: one driver task per leased run, the cancel and dead-letter subscriptions;
* ``driver``: what driving one run needs (reply inbox, job queue, failing the run);
* ``discovery``, ``groups`` (with ``timeouts``), ``releases``: the stages of a run, in order;
* ``queue``: publishing jobs, reading replies, deleting an ended run's jobs (by sequence);
* ``argo``: the Argo Workflows executor (``FORGE_EXECUTOR=argo``): jobs as workflows;
* ``dead_letters``: jobs JetStream gave up on;
* ``watchdog``: unanswered jobs no longer on their way to a worker (republished, or the run failed);
* ``log_lifecycle``: expiry of run logs in object storage.

``create_app`` builds the :class:`Dispatcher` with its settings; nothing here reads the
environment.
"""

from .argo import ArgoSettings
from .dispatcher import Dispatcher
from .log_lifecycle import apply_log_lifecycle
from .releases import evaluate_release_triggers
from .settings import DispatcherSettings

__all__ = ["ArgoSettings", "Dispatcher", "DispatcherSettings", "apply_log_lifecycle", "evaluate_release_triggers"]
