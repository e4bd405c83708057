"""Security profile targets: Attach, Detach, ListTargetsForSecurityProfile, ListSecurityProfilesForTarget.

A target is a thing group or one of the account-wide pseudo-targets:
``arn:aws:iot:{region}:{account}:thinggroup/{name}``, ``…:all/registered-things``,
``…:all/unregistered-things`` and ``…:all/things`` (AWS Detect "how to" guide).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iotdefender.contract.errors import invalid_request, limit_exceeded, not_found
from iotdefender.controlplane import hierarchy
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.operations import OperationTable, Params
from iotdefender.controlplane.security_profiles import require_profile
from iotdefender.store import profiles, registry
from iotdefender.controlplane.pagination import decode_token, page_size, scope_of, take_page

operation = OperationTable()

MAX_PROFILES_PER_TARGET = 5  # AWS quota "Security profiles for each target": 5, not adjustable
ACCOUNT_WIDE = ("all/registered-things", "all/unregistered-things", "all/things")


@dataclass(frozen=True)
class Target:
    arn: str
    group_name: str | None  # None for the account-wide targets


def parse_target(ctx: ServiceContext, conn: Any, arn: str) -> Target:
    """Validate a target ARN; a thing group that does not exist is ResourceNotFoundException."""
    prefix = ctx.arn("")
    resource = arn[len(prefix):] if arn.startswith(prefix) else None
    if resource in ACCOUNT_WIDE:
        return Target(arn, None)
    if resource is not None and resource.startswith("thinggroup/"):
        name = resource[len("thinggroup/"):]
        if registry.get_group(conn, name) is None:
            raise not_found(f"Thing group {name} does not exist")
        return Target(arn, name)
    raise invalid_request(
        f"Invalid security profile target {arn!r}: expected {prefix}thinggroup/NAME or "
        f"{prefix}all/registered-things, all/unregistered-things or all/things"
    )


@operation("AttachSecurityProfile")
def attach_security_profile(ctx: ServiceContext, params: Params) -> Params:
    name = params["securityProfileName"]
    with ctx.writing() as conn:
        require_profile(conn, name)
        target = parse_target(ctx, conn, params["securityProfileTargetArn"])
        profiles.lock_target(conn, target.arn)
        if profiles.is_attached(conn, name, target.arn):
            return {}
        if profiles.count_on(conn, target.arn) >= MAX_PROFILES_PER_TARGET:
            raise limit_exceeded(
                f"Target {target.arn} already has {MAX_PROFILES_PER_TARGET} security profiles attached, the maximum"
            )
        profiles.attach(conn, name, target.arn, ctx.now())
    return {}


@operation("DetachSecurityProfile")
def detach_security_profile(ctx: ServiceContext, params: Params) -> Params:
    name = params["securityProfileName"]
    arn = params["securityProfileTargetArn"]
    with ctx.writing() as conn:
        require_profile(conn, name)
        if not profiles.is_attached(conn, name, arn):
            raise not_found(f"Security profile {name} is not attached to target {arn}")
        profiles.detach(conn, name, arn)
    return {}


@operation("ListTargetsForSecurityProfile")
def list_targets_for_security_profile(ctx: ServiceContext, params: Params) -> Params:
    name = params["securityProfileName"]
    with ctx.engine.connect() as conn:
        require_profile(conn, name)
        scope = scope_of(params)
        after = decode_token(params.get("nextToken"), scope)
        arns = [a for a in profiles.targets_of(conn, name) if after is None or a > after]
    page, token = take_page(arns, page_size(params.get("maxResults")), lambda a: a, scope)
    return {"securityProfileTargets": [{"arn": a} for a in page], "nextToken": token}


@operation("ListSecurityProfilesForTarget")
def list_security_profiles_for_target(ctx: ServiceContext, params: Params) -> Params:
    with ctx.engine.connect() as conn:
        target = parse_target(ctx, conn, params["securityProfileTargetArn"])
        arns = [target.arn]
        if params.get("recursive") and target.group_name is not None:
            # "recursive: if true, return child groups too" (model documentation)
            arns += [ctx.arn(f"thinggroup/{g}")
                     for g in hierarchy.descendants(target.group_name, registry.all_group_parents(conn))]
        pairs = profiles.profiles_on(conn, arns)
        profile_arns = {name: ctx.arn(f"securityprofile/{name}") for name, _ in pairs}
    scope = scope_of(params)
    after = decode_token(params.get("nextToken"), scope, (str, str))
    keyed = sorted(((t, p) for p, t in pairs))
    keyed = [k for k in keyed if after is None or list(k) > list(after)]
    page, token = take_page(keyed, page_size(params.get("maxResults")), lambda k: list(k), scope)
    return {
        "securityProfileTargetMappings": [
            {"securityProfileIdentifier": {"name": p, "arn": profile_arns[p]}, "target": {"arn": t}}
            for t, p in page
        ],
        "nextToken": token,
    }
