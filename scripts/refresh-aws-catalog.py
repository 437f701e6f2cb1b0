#!/usr/bin/env python3
"""Rewrites coordinator/catalog/aws-on-demand.csv from the AWS Price List Query API.

For each instance type already in the catalog (plus any named with --add) and each region named
with --region (default: the regions already in the catalog), asks `pricing:GetProducts` for the
on-demand, Linux, shared-tenancy, no-preinstalled-software price per hour, and writes the catalog
back, keeping its header comment. Needs boto3 and AWS credentials allowed `pricing:GetProducts`
(the API answers in us-east-1 only). Run it where the internet is reachable, then commit the file.

    pip install boto3
    python3 scripts/refresh-aws-catalog.py [--region us-east-1 --region us-west-2] [--add g6e.4xlarge]
"""

import argparse
import json
import pathlib
import sys

CATALOG = pathlib.Path(__file__).resolve().parent.parent / "coordinator" / "catalog" / "aws-on-demand.csv"


def read_catalog():
    header, rows = [], []
    for line in CATALOG.read_text().splitlines():
        if line.startswith("#") or line.startswith("instance_type"):
            header.append(line)
        elif line.strip():
            t, r, p = line.split(",")
            rows.append((t, r, float(p)))
    return header, rows


def price(client, instance_type, region):
    filters = [
        ("instanceType", instance_type),
        ("regionCode", region),
        ("operatingSystem", "Linux"),
        ("tenancy", "Shared"),
        ("preInstalledSw", "NA"),
        ("capacitystatus", "Used"),
    ]
    answer = client.get_products(
        ServiceCode="AmazonEC2",
        Filters=[{"Type": "TERM_MATCH", "Field": f, "Value": v} for f, v in filters],
        MaxResults=10,
    )
    for item in answer["PriceList"]:
        product = json.loads(item)
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term["priceDimensions"].values():
                usd = float(dimension["pricePerUnit"].get("USD", "0"))
                if usd > 0:
                    return usd
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--region", action="append", default=[])
    parser.add_argument("--add", action="append", default=[], help="another instance type")
    args = parser.parse_args()
    try:
        import boto3
    except ImportError:
        sys.exit("boto3 is missing: pip install boto3")
    header, rows = read_catalog()
    types = sorted({t for t, _, _ in rows} | set(args.add))
    regions = args.region or sorted({r for _, r, _ in rows})
    client = boto3.client("pricing", region_name="us-east-1")
    out = []
    for t in types:
        for r in regions:
            p = price(client, t, r)
            if p is None:
                print(f"no on-demand price for {t} in {r}: left out", file=sys.stderr)
                continue
            out.append((t, r, p))
    lines = header + [f"{t},{r},{p:g}" for t, r, p in out]
    CATALOG.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(out)} prices to {CATALOG}")


if __name__ == "__main__":
    main()
