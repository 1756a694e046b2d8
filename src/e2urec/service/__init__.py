"""The HTTP service over a deployment folder: scoring, deletion requests, a status page.

A thin layer: routes validate and call `e2urec.deploy`, `e2urec.deploy.ledger` and the one scoring
path; the worker runs `deploy.apply` beside the server. It may import deploy/ and what is below
it, never bench/ or cli.
"""
