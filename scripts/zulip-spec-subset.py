#!/usr/bin/env python3
"""Writes tests/specs/zulip.openapi.subset.json: the operations of Zulip's
OpenAPI description (zerver/openapi/zulip.yaml, YAML) that herald calls
(send-message, get-messages, update-message) with every component they
reference, unchanged, as JSON, so the spec tests read it without a YAML
parser. Run it again when ../shared/specs/zulip.openapi.yaml changes:

    python3 scripts/zulip-spec-subset.py ../shared/specs/zulip.openapi.yaml
"""
import json
import sys

import yaml

OPERATIONS = [("/messages", "post"), ("/messages", "get"), ("/messages/{message_id}", "patch")]


def refs(node, found):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/"):
                found.add(value)
            else:
                refs(value, found)
    elif isinstance(node, list):
        for item in node:
            refs(item, found)


def main():
    source = sys.argv[1] if len(sys.argv) > 1 else "../shared/specs/zulip.openapi.yaml"
    with open(source) as f:
        spec = yaml.safe_load(f)
    subset = {
        "openapi": spec["openapi"],
        "info": dict(spec["info"], **{"x-herald-subset": "send-message, get-messages and update-message of " + source.rsplit("/", 1)[-1] + ", with the components they reference; made by scripts/zulip-spec-subset.py"}),
        "servers": spec["servers"],
        "security": spec.get("security"),
        "paths": {},
        "components": {"securitySchemes": spec["components"]["securitySchemes"]},
    }
    for path, method in OPERATIONS:
        subset["paths"].setdefault(path, {})[method] = spec["paths"][path][method]
    pending = set()
    refs(subset["paths"], pending)
    done = set()
    while pending:
        ref = pending.pop()
        if ref in done:
            continue
        done.add(ref)
        parts = ref[2:].split("/")
        node = spec
        for part in parts:
            node = node[part.replace("~1", "/").replace("~0", "~")]
        target = subset
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = node
        refs(node, pending)
    with open("tests/specs/zulip.openapi.subset.json", "w") as f:
        json.dump(subset, f, indent=1, sort_keys=True, default=str)
        f.write("\n")


main()
