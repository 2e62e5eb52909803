"""Prepares the OpenAPI checks against a running Kiln (KILN_URL, with a trailing slash).

Saves /openapi.json to the file named by argv[1] (after checking that the gzip copy is the
same document) and prints the sizes to stderr; signs in as the administrator
(KILN_ADMIN_EMAIL / KILN_ADMIN_PASSWORD, PKCE S256), writes a few resources so that searches
find something, and prints the access token on stdout. Standard library only.
"""

import base64
import gzip
import hashlib
import json
import os
import sys
import urllib.parse
import urllib.request

BASE = os.environ["KILN_URL"]


def request(method, path, body=None, headers=None, raw=False):
    req = urllib.request.Request(BASE + path, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=60) as res:
        data = res.read()
        return (res, data) if raw else json.loads(data)


def fetch_document(out):
    res, plain = request("GET", "openapi.json", raw=True)
    res_gz, packed = request("GET", "openapi.json", headers={"Accept-Encoding": "gzip"}, raw=True)
    if res_gz.headers.get("Content-Encoding") != "gzip" or gzip.decompress(packed) != plain:
        sys.exit("FAIL: /openapi.json with Accept-Encoding: gzip is not the gzip of the document")
    doc = json.loads(plain)
    print(
        f"openapi.json: {len(plain):,} bytes, {len(packed):,} gzipped; "
        f"{len(doc['paths'])} paths, {len(doc['components']['schemas'])} schemas",
        file=sys.stderr,
    )
    with open(out, "wb") as f:
        f.write(plain)


def token():
    verifier = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    login = {
        "email": os.environ["KILN_ADMIN_EMAIL"],
        "password": os.environ["KILN_ADMIN_PASSWORD"],
        "scope": "openid",
        "codeChallenge": challenge,
        "codeChallengeMethod": "S256",
    }
    out = request("POST", "auth/login", json.dumps(login).encode(), {"Content-Type": "application/json"})
    form = urllib.parse.urlencode(
        {"grant_type": "authorization_code", "code": out["code"], "code_verifier": verifier}
    ).encode()
    out = request("POST", "oauth2/token", form, {"Content-Type": "application/x-www-form-urlencoded"})
    return out["access_token"]


def seed(access_token):
    """One resource of each fuzzed type under the id `openapi-1` (schemathesis.toml offers it
    as a path id), the Patient in two versions."""
    headers = {"Authorization": f"Bearer {access_token}", "Content-Type": "application/fhir+json"}
    subject = {"reference": "Patient/openapi-1"}
    resources = [
        {
            "resourceType": "Patient",
            "name": [{"family": "Schema", "given": ["Open"]}],
            "gender": "female",
            "birthDate": "1980-04-02",
        },
        {
            "resourceType": "Patient",
            "name": [{"family": "Schema", "given": ["Open", "API"]}],
            "gender": "female",
            "birthDate": "1980-04-02",
            "telecom": [{"system": "email", "value": "open.schema@example.com"}],
        },
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}], "text": "Body weight"},
            "subject": subject,
            "effectiveDateTime": "2024-01-10T09:30:00Z",
            "valueQuantity": {"value": 61.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
        },
        {
            "resourceType": "Condition",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
            "subject": subject,
            "onsetDateTime": "2019-06-01",
        },
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": subject,
            "period": {"start": "2024-01-10T09:00:00Z", "end": "2024-01-10T10:00:00Z"},
        },
    ]
    for resource in resources:
        resource["id"] = "openapi-1"
        path = f"fhir/R4/{resource['resourceType']}/openapi-1"
        request("PUT", path, json.dumps(resource).encode(), headers)


if __name__ == "__main__":
    fetch_document(sys.argv[1])
    t = token()
    seed(t)
    print(t)
