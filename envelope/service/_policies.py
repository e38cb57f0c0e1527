"""Key policies: GetKeyPolicy, PutKeyPolicy, ListKeyPolicies.

Every key has exactly one policy, named ``default``; it lives in the key row (so it is
authenticated and replicated with the key's metadata, and changes atomically with it). A key
made before access control existed has the default key policy, which gives its account root
everything and so delegates the key to the account's IAM policies, as it always behaved.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from . import _authz
from ._core import RequestContext, Response, ServiceCore, _Call, _limit, _marker_decode
from ._states import READ
from .errors import NotFoundException, ValidationException

_POLICY_NAME = re.compile(r"^\w{1,128}$")


def _policy_name(name: Any) -> str:
    if not isinstance(name, str) or not _POLICY_NAME.match(name):
        raise ValidationException("PolicyName must be 1..128 word characters")
    return name


class KeyPolicyOps(ServiceCore):
    """The key policy of a key."""

    def get_key_policy(
        self,
        *,
        key_id: str,
        policy_name: str = _authz.DEFAULT_POLICY_NAME,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            name = _policy_name(policy_name)
            key = self._key(conn, call, key_id, READ, now)
            if name != _authz.DEFAULT_POLICY_NAME:
                raise NotFoundException(f"{key.arn} has no key policy named {name}")
            text = key.meta.get("x_policy") or _authz.default_key_policy(key.account)
            return {"Policy": text, "PolicyName": name}

        return self._run("GetKeyPolicy", principal, context, {"PolicyName": policy_name}, op)

    def put_key_policy(
        self,
        *,
        key_id: str,
        policy: str,
        policy_name: str = _authz.DEFAULT_POLICY_NAME,
        bypass_policy_lockout_safety_check: bool = False,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """Replace the key policy (validated, and refused if it would lock the caller out of
        PutKeyPolicy unless `bypass_policy_lockout_safety_check`)."""
        params = {
            "PolicyName": policy_name,
            "BypassPolicyLockoutSafetyCheck": bypass_policy_lockout_safety_check,
        }

        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            name = _policy_name(policy_name)
            if name != _authz.DEFAULT_POLICY_NAME:
                raise ValidationException("PolicyName must be default: a key has one policy")
            call.values["kms:bypasspolicylockoutsafetycheck"] = (
                bypass_policy_lockout_safety_check is True
            )
            key = self._key(conn, call, key_id, READ, now)
            # an AWS managed key's policy allows no PutKeyPolicy, so `_key` refused it already
            self._customer_managed(key, "PutKeyPolicy")
            key.meta["x_policy"] = self._checked_policy(
                conn, call, policy, key.arn, key.account, bypass_policy_lockout_safety_check, key
            )
            self._save(conn, key)
            return {}

        return self._run("PutKeyPolicy", principal, context, params, op)

    def list_key_policies(
        self,
        *,
        key_id: str,
        limit: int | None = None,
        marker: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _limit(limit, 100, 1000)
            after = _marker_decode(call, marker)
            self._key(conn, call, key_id, READ, now)
            names = [] if after is not None else [_authz.DEFAULT_POLICY_NAME]
            return {"PolicyNames": names, "Truncated": False}

        return self._run("ListKeyPolicies", principal, context, {}, op)
