"""Schemathesis hooks for .ci/schemathesis: steer the valid (positive)
cases toward the destinations the test config has, so they reach the
broadcast routes instead of stopping at "unknown destination". Only
positive cases are changed, and only into other valid values: the
document is not weakened, and every negative case is sent as generated.

The config's destination names come from HERALD_ST_DESTINATIONS
(comma-separated), set by .ci/schemathesis.
"""

import os
import uuid

import schemathesis
from hypothesis.internal import lambda_sources


def _describe_lambda_or_give_up(describe):
    """This machine's CPython (3.11.7) can raise SystemError "AST
    constructor recursion depth mismatch" from ast.parse when it is called
    deep in the stack. hypothesis parses a module's source to describe a
    lambda for a strategy's repr (Schemathesis's `.filter(lambda ...)`), so
    now and then a whole run failed with a "Runtime Error" that says
    nothing about herald (once in two runs here). A lambda it cannot
    describe gets hypothesis's own "unknown" description instead; nothing
    that is generated or checked changes."""

    def described(f):
        try:
            return describe(f)
        except SystemError:
            return "lambda: <unknown>"

    return described


lambda_sources._lambda_description = _describe_lambda_or_give_up(
    lambda_sources._lambda_description
)

DESTINATIONS = [name for name in os.environ["HERALD_ST_DESTINATIONS"].split(",") if name]


def steer_objective(objective):
    """An objective's names are the broadcast's own destinations (every
    configured one, as above) and a fallback outside `of`: `of` is all but
    the last, `any` at most that many, the last is the fallback and the
    meta-alert's destination. Counts and deadlines stay as generated."""
    confirm = objective.get("confirm")
    if isinstance(confirm, dict):
        of = DESTINATIONS[:-1]
        confirm["of"] = of
        count = confirm.get("any")
        if isinstance(count, (int, float)) and not isinstance(count, bool):
            # 37.0 is the integer 37 to JSON Schema; serde reads a u32 only
            # from 37.
            confirm["any"] = max(1, min(int(count), len(of)))
    if "fallback" in objective or "on_escalation" not in objective:
        objective["fallback"] = DESTINATIONS[-1:]
    if "on_escalation" in objective:
        objective["on_escalation"] = DESTINATIONS[-1]


@schemathesis.hook
def map_case(context, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return case
    path = case.operation.path
    method = case.method.upper()
    if method == "POST" and path in ("/v1/broadcasts", "/v1/preview"):
        if isinstance(case.body, dict) and isinstance(case.body.get("destinations"), list):
            # Every configured destination, so that a later retry or cancel
            # naming some of them names destinations of the broadcast.
            case.body["destinations"] = list(DESTINATIONS)
        objective = case.body.get("objective") if isinstance(case.body, dict) else None
        if isinstance(objective, dict):
            if case.body.get("resolved") is True:
                # A resolve carries no objective (a 400 naming `objective`).
                del case.body["objective"]
            else:
                steer_objective(objective)
        if case.headers and "Idempotency-Key" in case.headers:
            # A generated key is often reused with another body (a 422 by
            # design); a fresh key per case is as valid.
            case.headers["Idempotency-Key"] = uuid.uuid4().hex
    elif method == "POST" and path in ("/v1/broadcasts/{id}/retry", "/v1/broadcasts/{id}/cancel"):
        if isinstance(case.body, dict) and case.body.get("destinations"):
            # The first configured destination is in every broadcast: the
            # examples phase sends the document's example, ["ops-webhook"].
            case.body["destinations"] = DESTINATIONS[:1]
    elif method == "POST" and path == "/v1/ingest/alertmanager":
        truncated = case.body.get("truncatedAlerts") if isinstance(case.body, dict) else None
        if isinstance(truncated, float):
            # 61.0 is the integer 61 to JSON Schema; serde reads a u64 only
            # from 61, as the document's description says.
            case.body["truncatedAlerts"] = int(truncated)
    elif path in ("/v1/destinations/{name}/pause", "/v1/destinations/{name}/resume"):
        if case.path_parameters and "name" in case.path_parameters:
            name = str(case.path_parameters["name"])
            case.path_parameters["name"] = DESTINATIONS[sum(map(ord, name)) % len(DESTINATIONS)]
    return case
