"""Targets from AWS Organizations at scale: list an organization on moto, expand the policy; print the figures.

    .venv/bin/python bench/organizations.py [--accounts 2000] [--regions 2] [--ous 20]

moto serves Organizations in process (pages of 20 accounts, as AWS), so the listing time is moto's
plus botocore's parsing, not AWS's latency: AWS adds ~50-100 ms per call (calls are printed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3
from moto import mock_aws

from chalicelib.config import parse_policy
from chalicelib.organizations import OrganizationsLister, OrganizationTargets

REGIONS = ["eu-west-1", "us-east-1", "eu-central-1", "ap-southeast-2"]


def build_org(accounts: int, ous: int) -> str:
    """A root with `ous` units, each with a child unit; accounts spread over all of them. Returns the root id."""
    from moto.organizations.models import FakeAccount, organizations_backends

    client = boto3.client("organizations", region_name="us-east-1")
    client.create_organization(FeatureSet="ALL")
    root = client.list_roots()["Roots"][0]["Id"]
    parents = []
    for i in range(ous):
        unit = client.create_organizational_unit(ParentId=root, Name=f"unit-{i}")["OrganizationalUnit"]["Id"]
        child = client.create_organizational_unit(ParentId=unit, Name=f"unit-{i}-child")["OrganizationalUnit"]["Id"]
        parents += [unit, child]
    backend = organizations_backends["123456789012"]["aws"]
    for i in range(accounts):  # straight into moto's model: 2,000 CreateAccount calls would time moto, not us
        account = FakeAccount(backend.org, AccountName=f"acct-{i}", Email=f"acct-{i}@example.test")
        account.parent_id = parents[i % len(parents)]
        backend.accounts.append(account)
    return root


def policy_for(root: str, regions: int):
    source = {"name": "org", "ous": [root], "role_name": "vif-gatekeeper-member", "regions": REGIONS[:regions]}
    hub = {"name": "hub", "provider": "aws", "region": "eu-west-1", "account_id": "444455556666"}
    rule = {"name": "r", "accounts": ["444455556666"], "targets": ["org"], "action": "ask"}
    return parse_policy(json.dumps({"targets": [hub, {"from_organization": source}], "rules": [rule]}))


def measure(accounts: int, regions: int, ous: int) -> dict:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        root = build_org(accounts, ous)
        policy = policy_for(root, regions)
        session = boto3.Session(region_name="us-east-1")
        calls: Counter = Counter()
        session.events.register("before-call.organizations", lambda model, **_: calls.update([model.name]))
        lister = OrganizationsLister(lambda: session)
        started = time.perf_counter()
        listed = lister(policy.organizations[0])
        listing = time.perf_counter() - started
        targets = OrganizationTargets(lambda source: listed)
        started = time.perf_counter()
        expanded = targets.expanded(policy)
        expand = time.perf_counter() - started
        started = time.perf_counter()
        again = targets.expanded(policy)
        cached = time.perf_counter() - started
    assert again is expanded and len(expanded.targets) == 1 + len(listed) * regions
    return {
        "accounts": len(listed),
        "targets": len(expanded.targets) - 1,
        "calls": dict(calls),
        "listing_s": round(listing, 3),
        "expand_s": round(expand, 3),
        "expand_us_per_target": round(expand / (len(expanded.targets) - 1) * 1e6, 1),
        "cached_read_ms": round(cached * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--regions", type=int, default=2, choices=range(1, len(REGIONS) + 1))
    parser.add_argument("--ous", type=int, default=20)
    args = parser.parse_args()
    figures = measure(args.accounts, args.regions, args.ous)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
