"""Carrying deletion requests out on a deployment folder: `init` makes it, `request` records a
request, `apply` unlearns, verifies, puts the new version live and purges the data, `status`
and the hash-chained ledger show what was done. With `init(..., exact="apa")` each request
is then carried out exactly as well (`exact_phase`).

It may import evals/, methods/, model/, data/, `metrics` and the shared modules, never api,
bench/, service/ or cli.
"""

from e2urec.deploy.apply_loop import apply
from e2urec.deploy.create import catalogue, init
from e2urec.deploy.folder import Busy
from e2urec.deploy.intake import (
    NotCancellable,
    Refused,
    cancel,
    live_model,
    pending_requests,
    request,
    status,
)
from e2urec.deploy.integrity import Tampered, verify

__all__ = [
    "Busy",
    "NotCancellable",
    "Refused",
    "Tampered",
    "apply",
    "cancel",
    "catalogue",
    "init",
    "live_model",
    "pending_requests",
    "request",
    "status",
    "verify",
]
