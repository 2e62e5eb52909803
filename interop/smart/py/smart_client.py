"""SMART's Python client (PyPI `fhirclient`, client-py) against Kiln, unchanged.

The library makes the authorize URL (state, S256 PKCE, aud, scopes, from the endpoints it
finds in /metadata), exchanges the code (`handle_callback`, HTTP Basic for this confidential
client), reads through its models, and refreshes (`reauthorize`). What the library leaves to
the app, a person at a browser, is done here with `requests`: the sign-in form and the consent
form, as Kiln serves them (cookies kept, the CSRF token taken from the form's hidden `csrf`
input). Nothing is patched or subclassed.

Run by run.mjs (node --test) with these environment variables:
  KILN_FHIR_BASE    e.g. http://127.0.0.1:4000/fhir/R4
  PY_CLIENT_ID, PY_CLIENT_SECRET, PY_REDIRECT_URI
  PY_EMAIL, PY_PASSWORD          the patient who signs in
  PY_SCOPE                       scopes besides launch/patient (the library adds that one)
  PY_UNTICK                      a scope to untick on the consent page (optional)

Prints one JSON object with what the library got; run.mjs asserts on it.
"""

import json
import os
import sys
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlsplit

import requests
from fhirclient import client
from fhirclient.models.observation import Observation
from fhirclient.models.condition import Condition
from fhirclient.server import FHIRPermissionDeniedException


class Forms(HTMLParser):
    """The forms of a page: action, method, and their fields (inputs and submit buttons)."""

    def __init__(self):
        super().__init__()
        self.forms = []
        self.h1 = None
        self._in_h1 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "method": a.get("method", "get"), "fields": []})
        elif tag in ("input", "button") and self.forms:
            self.forms[-1]["fields"].append(
                {
                    "tag": tag,
                    "type": a.get("type", "text" if tag == "input" else "submit"),
                    "name": a.get("name"),
                    "value": a.get("value", ""),
                    "checked": "checked" in a,
                }
            )
        elif tag == "h1":
            self._in_h1 = True
            self.h1 = ""

    def handle_endtag(self, tag):
        if tag == "h1":
            self._in_h1 = False

    def handle_data(self, data):
        if self._in_h1:
            self.h1 += data


def parse(html):
    p = Forms()
    p.feed(html)
    return p


def form_with_action(page, action):
    for f in page.forms:
        if f["action"] == action:
            return f
    raise AssertionError(f"no form posting to {action}; forms: {[f['action'] for f in page.forms]}")


def fields(form, skip_types=("submit", "checkbox")):
    """The values a browser would send: hidden and text inputs (not buttons, not checkboxes)."""
    return [(f["name"], f["value"]) for f in form["fields"] if f["name"] and f["type"] not in skip_types]


def main():
    env = os.environ
    out = {}
    smart = client.FHIRClient(
        settings={
            "app_id": env["PY_CLIENT_ID"],
            "app_secret": env["PY_CLIENT_SECRET"],
            "api_base": env["KILN_FHIR_BASE"],
            "redirect_uri": env["PY_REDIRECT_URI"],
            "scope": env["PY_SCOPE"],
        }
    )
    url = smart.authorize_url
    q = parse_qs(urlsplit(url).query)
    out["authorize"] = {k: v[0] for k, v in q.items() if k not in ("state", "code_challenge")}
    out["authorize"]["code_challenge_len"] = len(q.get("code_challenge", [""])[0])

    browser = requests.Session()
    # 1. Kiln's sign-in page.
    r = browser.get(url)
    page = parse(r.text)
    out["signin_page"] = {"status": r.status_code, "h1": page.h1, "csrf_cookie": "kiln_csrf" in browser.cookies}
    form = form_with_action(page, "/oauth2/authorize/signin")
    data = [(k, v) for k, v in fields(form) if k not in ("email", "password")] + [
        ("email", env["PY_EMAIL"]),
        ("password", env["PY_PASSWORD"]),
    ]
    # 2. Signed in: the 303 leads (followed by requests) to the consent page.
    r = browser.post(urljoin(r.url, form["action"]), data=data)
    page = parse(r.text)
    out["consent_page"] = {"status": r.status_code, "h1": page.h1}
    form = form_with_action(page, "/oauth2/authorize/consent")
    offered = [f["value"] for f in form["fields"] if f["type"] == "checkbox" and f["name"] == "grant"]
    out["offered"] = offered
    untick = env.get("PY_UNTICK")
    grant = [("grant", s) for s in offered if s != untick]
    data = fields(form) + grant + [("decision", "allow")]
    # 3. Allow: Kiln redirects to the app's redirect URI, which a browser would load; the app
    # hands that URL to the library.
    r = browser.post(urljoin(r.url, form["action"]), data=data, allow_redirects=False)
    location = r.headers.get("location", "")
    out["redirect"] = {"status": r.status_code, "to_redirect_uri": location.startswith(env["PY_REDIRECT_URI"])}
    smart.handle_callback(location)
    ctx = smart.launch_context or {}
    out["launch_context"] = {k: v for k, v in ctx.items() if k not in ("id_token",)}
    out["ready"] = smart.ready
    out["patient_id"] = smart.patient_id

    # 4. Reads through the library's models.
    patient = smart.patient
    out["patient"] = {
        "id": patient.id,
        "name": smart.human_name(patient.name[0]) if patient.name else None,
        "birthDate": patient.birthDate.isostring if patient.birthDate else None,
    }
    observations = Observation.where(struct={"patient": smart.patient_id}).perform_resources(smart.server)
    out["observations"] = sorted(o.id for o in observations)
    try:
        Condition.where(struct={"patient": smart.patient_id}).perform_resources(smart.server)
        out["conditions"] = "allowed"
    except FHIRPermissionDeniedException as e:
        out["conditions"] = e.response.status_code
    except requests.HTTPError as e:
        out["conditions"] = e.response.status_code

    # 5. Refresh (offline_access): a new access token that still reads.
    old = smart.server.auth.access_token
    out["reauthorize"] = smart.reauthorize()
    out["new_access_token"] = smart.server.auth.access_token != old
    smart._patient = None
    out["patient_after_refresh"] = smart.patient.id

    json.dump(out, sys.stdout, indent=1, default=str)
    print()


if __name__ == "__main__":
    main()
