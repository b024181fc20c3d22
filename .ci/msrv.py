#!/usr/bin/env python3
"""Checks leasehold's `rust-version` against what its dependency tree requires.

No older toolchain can be installed here, so the MSRV is checked in two halves:
- the dependencies: the highest `rust-version` declared by any package that the library and the
  command (all features) depend on, normal or build dependencies, must not exceed ours (this
  reads `cargo metadata`, which resolves exactly what `Cargo.lock` pins);
- our own code: clippy's `incompatible_msrv` lint (on by default, denied in CI) flags standard
  library items stabilized after our `rust-version`.
Language features newer than the `rust-version` are not caught by either; edition 2024 and
let-chains need 1.88, below the 1.89 that kube 5 requires.
"""
import json
import subprocess
import sys


def version(text):
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


metadata = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
packages = {p["id"]: p for p in metadata["packages"]}
nodes = {n["id"]: n for n in metadata["resolve"]["nodes"]}
root = next(p for p in metadata["packages"] if p["name"] == "leasehold")
ours = version(root["rust_version"])

seen, stack = set(), [root["id"]]
while stack:
    node = nodes[stack.pop()]
    for dep in node["deps"]:
        kinds = {k["kind"] for k in dep["dep_kinds"]}
        if kinds & {None, "build"} and dep["pkg"] not in seen:
            seen.add(dep["pkg"])
            stack.append(dep["pkg"])

needed = sorted(
    (version(packages[p]["rust_version"]), packages[p]["name"])
    for p in seen
    if packages[p].get("rust_version")
)
highest, by = needed[-1]
print(
    f"rust-version {root['rust_version']}; the dependencies need at most "
    f"{'.'.join(map(str, highest))} ({by}, of {len(seen)} packages)"
)
if highest > ours:
    print(f"{by} needs Rust {'.'.join(map(str, highest))}: raise rust-version", file=sys.stderr)
    sys.exit(1)
