#!/usr/bin/env python3
"""Checks again, with a third-party validator, the mock answers that
tests/it/mock_answers.rs found valid against their published descriptions.

Input: the JSON lines the test writes when HERALD_MOCK_ANSWERS_DUMP names a
file (spec file, answer, response schema, body): the answers checked
against a JSON OpenAPI or Swagger description (Slack, Jira, PagerDuty,
Discord, Twilio, Zulip's subset); Matrix's YAML files, Telegram's reference
and Google Chat's discovery document are checked by the test alone. Each body is validated
against its schema, with `$ref`s resolved in the whole description, by
openapi-schema-validator (OAS 3.0 / 3.1 dialects) or, for Slack's Swagger
2.0, jsonschema's draft 4. Any answer the third-party validator refuses
fails the run: the in-repo validator and it must agree.
"""
import json
import pathlib
import sys

from jsonschema import Draft4Validator
from openapi_schema_validator import OAS30Validator, OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4, DRAFT202012

SPECS = pathlib.Path(__file__).resolve().parent.parent / "tests" / "specs"


def validator_for(document, schema):
    if "swagger" in document:
        cls, dialect = Draft4Validator, DRAFT4
    elif document["openapi"].startswith("3.1"):
        cls, dialect = OAS31Validator, DRAFT202012
    else:
        cls, dialect = OAS30Validator, DRAFT4
    registry = Registry().with_resource(
        "urn:spec", Resource.from_contents(document, default_specification=dialect)
    )
    # The schema is the operation's response schema; its `#/...` references
    # point into the description it came from.
    wrapped = {"$ref": "urn:spec#/x-herald-answer"}
    document["x-herald-answer"] = schema
    return cls(wrapped, registry=registry)


def main(dump):
    documents = {}
    failures = 0
    count = 0
    for line in pathlib.Path(dump).read_text().splitlines():
        if not line.strip():
            continue
        answer = json.loads(line)
        spec = answer["spec"]
        if spec not in documents:
            documents[spec] = json.loads((SPECS / spec).read_text())
        validator = validator_for(documents[spec], answer["schema"])
        errors = sorted(validator.iter_errors(answer["body"]), key=str)
        count += 1
        for error in errors:
            failures += 1
            path = "/" + "/".join(str(p) for p in error.absolute_path)
            print(f"{answer['answer']}: {path}: {error.message}")
    if count == 0:
        print(f"{dump} holds no answers: the test did not write them")
        return 1
    print(f"{count} mock answers checked with openapi-schema-validator/jsonschema, {failures} errors")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
