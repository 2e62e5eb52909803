// A tiny SMART app, served on 127.0.0.1 at a random port, that the browser tests walk through.
//
// Two apps live here:
//
// - "Chart Viewer", a confidential client written by hand: its pages are plain HTML with no
//   JavaScript, and its server does the OAuth work (discovery, state, S256 PKCE, the code
//   exchange with HTTP Basic, the FHIR reads). Routes:
//     GET /start?scope=…        page with a "Connect to Kiln" link (standalone launch)
//     GET /launch?iss=…&launch=… EHR launch: checks iss, redirects to Kiln's authorize endpoint
//     GET /callback?code|error&state=…  exchanges the code, reads data, shows what it got
//     GET /data?state=…         reads the patient again with the stored access token
//     GET /refresh?state=…      uses the stored refresh token
// - "fhirclient.js app", a public client: SMART's own JS library (npm `fhirclient`, browser
//   bundle) running in the page:
//     GET /js/fhir-client.js    node_modules/fhirclient/build/fhir-client.js
//     GET /js/launch.html       FHIR.oauth2.authorize(…) (standalone, or EHR with ?iss&launch)
//     GET /js/index.html        FHIR.oauth2.ready() then reads; the result in <pre id="result">
//
// The test process keeps a handle on the server and reads what each flow received
// (`app.flows`, `app.launches`).

import { createHash, createPublicKey, randomBytes, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const fhirClientBundle = require.resolve('fhirclient/build/fhir-client.js');

const b64url = (buf) => buf.toString('base64url');

function escapeHtml(s) {
  return String(s).replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]
  );
}

function page(title, body, { script = '' } = {}) {
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>${escapeHtml(title)}</title>${script}
<style>body{font:15px/1.4 system-ui,sans-serif;margin:2rem;max-width:48rem}pre{background:#f3f3f3;padding:.5rem;white-space:pre-wrap;word-break:break-all}</style>
</head>
<body>
${body}
</body>
</html>`;
}

/**
 * Starts the app server.
 *
 * @param {{fhirBase: string}} options  Kiln's FHIR base URL, e.g. http://127.0.0.1:4000/fhir/R4
 */
export async function startApp({ fhirBase }) {
  const app = {
    url: '',
    /** Chart Viewer's registration: `{id, secret}` (set after the client is registered). */
    chart: null,
    /** The fhirclient.js app's registration: `{id}`. */
    pocket: null,
    /** Every flow Chart Viewer started, by `state`. */
    flows: new Map(),
    /** Every EHR launch request Chart Viewer received: `{iss, launch}`. */
    launches: [],
    /** Every request the server received (method and URL), for diagnostics. */
    requests: [],
  };

  async function discover(iss) {
    const res = await fetch(`${iss}/.well-known/smart-configuration`, {
      headers: { accept: 'application/json' },
    });
    if (!res.ok) {
      throw new Error(`smart-configuration: HTTP ${res.status}`);
    }
    return res.json();
  }

  async function newFlow({ iss, scope, launch }) {
    const conf = await discover(iss);
    const state = b64url(randomBytes(16));
    const nonce = b64url(randomBytes(12));
    const verifier = b64url(randomBytes(48));
    const challenge = b64url(createHash('sha256').update(verifier).digest());
    const params = new URLSearchParams({
      response_type: 'code',
      client_id: app.chart.id,
      redirect_uri: `${app.url}/callback`,
      scope,
      state,
      aud: iss,
      code_challenge: challenge,
      code_challenge_method: 'S256',
      nonce,
    });
    if (launch) {
      params.set('launch', launch);
    }
    const flow = {
      state,
      verifier,
      nonce,
      scope,
      launch,
      conf,
      authorizeUrl: `${conf.authorization_endpoint}?${params}`,
      callback: null,
      token: null,
      reads: null,
    };
    app.flows.set(state, flow);
    return flow;
  }

  /** POSTs a form to Kiln's token endpoint as Chart Viewer (HTTP Basic). */
  async function tokenRequest(flow, form) {
    const res = await fetch(flow.conf.token_endpoint, {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        authorization: `Basic ${Buffer.from(`${app.chart.id}:${app.chart.secret}`).toString('base64')}`,
        accept: 'application/json',
      },
      body: new URLSearchParams(form).toString(),
    });
    return { status: res.status, body: await res.json().catch(() => null) };
  }

  /**
   * Checks an OpenID Connect ID token as a relying party must: RS256 signature by a key of the
   * server's JWKS (`jwks_uri` from discovery), issuer, audience, nonce, expiry. Answers `true`
   * or what is wrong.
   */
  async function verifyIdToken(flow, idToken) {
    const [h, p, sig] = idToken.split('.');
    const header = JSON.parse(Buffer.from(h, 'base64url').toString());
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString());
    if (header.alg !== 'RS256') {
      return `alg ${header.alg}`;
    }
    const jwks = await (await fetch(flow.conf.jwks_uri)).json();
    const jwk = jwks.keys.find((k) => k.kid === header.kid);
    if (!jwk) {
      return `no key ${header.kid} in ${flow.conf.jwks_uri}`;
    }
    const ok = verify('RSA-SHA256', Buffer.from(`${h}.${p}`), createPublicKey({ key: jwk, format: 'jwk' }), Buffer.from(sig, 'base64url'));
    if (!ok) {
      return 'bad signature';
    }
    if (claims.iss !== flow.conf.issuer) {
      return `iss ${claims.iss} is not the issuer ${flow.conf.issuer}`;
    }
    if (claims.aud !== app.chart.id && !(Array.isArray(claims.aud) && claims.aud.includes(app.chart.id))) {
      return `aud ${claims.aud}`;
    }
    if (claims.nonce !== flow.nonce) {
      return `nonce ${claims.nonce}`;
    }
    if (!(claims.exp > Date.now() / 1000)) {
      return `expired: exp ${claims.exp}`;
    }
    return true;
  }

  async function read(accessToken, path) {
    const res = await fetch(`${fhirBase}/${path}`, {
      headers: { authorization: `Bearer ${accessToken}`, accept: 'application/fhir+json' },
    });
    return { status: res.status, body: await res.json().catch(() => null) };
  }

  /** What the app reads with a fresh token: the launch patient's record and a few types. */
  async function readContext(token) {
    const reads = {};
    const at = token.access_token;
    if (token.patient) {
      reads.patient = await read(at, `Patient/${token.patient}`);
      reads.observations = await read(at, `Observation?patient=${token.patient}`);
      reads.conditions = await read(at, `Condition?patient=${token.patient}`);
    }
    if (token.encounter) {
      reads.encounter = await read(at, `Encounter/${token.encounter}`);
    }
    return reads;
  }

  function summary(flow) {
    const t = flow.token?.body ?? {};
    const reads = {};
    for (const [k, v] of Object.entries(flow.reads ?? {})) {
      reads[k] = {
        status: v.status,
        ...(v.body?.resourceType === 'Bundle' ? { entries: (v.body.entry ?? []).length } : {}),
        ...(v.body?.resourceType && v.body.resourceType !== 'Bundle' ? { resourceType: v.body.resourceType } : {}),
      };
    }
    const idToken = t.id_token
      ? JSON.parse(Buffer.from(t.id_token.split('.')[1], 'base64url').toString())
      : null;
    return {
      tokenStatus: flow.token?.status,
      tokenType: t.token_type,
      fhirUser: idToken?.fhirUser,
      idTokenVerified: flow.idTokenVerified,
      scope: t.scope,
      patient: t.patient,
      encounter: t.encounter,
      refreshToken: typeof t.refresh_token === 'string',
      reads,
    };
  }

  function patientName(p) {
    const n = p?.name?.[0];
    return n ? [...(n.given ?? []), n.family].filter(Boolean).join(' ') : '(no name)';
  }

  const routes = {
    async '/start'(url) {
      const scope = url.searchParams.get('scope') ?? 'launch/patient openid fhirUser patient/*.rs';
      const flow = await newFlow({ iss: fhirBase, scope });
      return [
        200,
        page(
          'Chart Viewer',
          `<h1>Chart Viewer</h1>
<p>This app reads your health record from Kiln.</p>
<p>It will ask for: <code id="scope">${escapeHtml(scope)}</code></p>
<p><a id="connect" href="${escapeHtml(flow.authorizeUrl)}">Connect to Kiln</a></p>`
        ),
      ];
    },

    async '/launch'(url) {
      const iss = url.searchParams.get('iss');
      const launch = url.searchParams.get('launch');
      app.launches.push({ iss, launch });
      if (iss !== fhirBase || !launch) {
        return [400, page('Chart Viewer', `<h1>Chart Viewer</h1><p id="error">Unexpected launch: iss=${escapeHtml(iss)}, launch=${escapeHtml(launch)}</p>`)];
      }
      const scope = url.searchParams.get('scope') ?? 'launch openid fhirUser patient/*.rs';
      const flow = await newFlow({ iss, scope, launch });
      return [302, '', { location: flow.authorizeUrl }];
    },

    async '/callback'(url) {
      const state = url.searchParams.get('state');
      const flow = app.flows.get(state);
      if (!flow) {
        return [400, page('Chart Viewer', `<h1>Chart Viewer</h1><p id="error">Unknown state ${escapeHtml(state)}</p>`)];
      }
      flow.callback = Object.fromEntries(url.searchParams);
      const error = url.searchParams.get('error');
      if (error) {
        return [
          200,
          page('Chart Viewer', `<h1>Chart Viewer</h1><p id="error">Kiln said: ${escapeHtml(error)}</p>`),
        ];
      }
      flow.token = await tokenRequest(flow, {
        grant_type: 'authorization_code',
        code: url.searchParams.get('code'),
        redirect_uri: `${app.url}/callback`,
        code_verifier: flow.verifier,
      });
      if (flow.token.status !== 200) {
        return [
          200,
          page('Chart Viewer', `<h1>Chart Viewer</h1><p id="error">Token request failed: HTTP ${flow.token.status}</p><pre>${escapeHtml(JSON.stringify(flow.token.body))}</pre>`),
        ];
      }
      if (flow.token.body.id_token) {
        flow.idTokenVerified = await verifyIdToken(flow, flow.token.body.id_token);
      }
      flow.reads = await readContext(flow.token.body);
      const rows = Object.entries(flow.reads)
        .map(([k, v]) => `<tr><td>${k}</td><td>${v.status}</td></tr>`)
        .join('');
      const p = flow.reads.patient?.body;
      return [
        200,
        page(
          'Chart Viewer',
          `<h1>Chart Viewer</h1>
<p id="patient">Patient: ${escapeHtml(p ? patientName(p) : '(none)')}</p>
<table><thead><tr><th>Read</th><th>HTTP status</th></tr></thead><tbody>${rows}</tbody></table>
<pre id="result">${escapeHtml(JSON.stringify(summary(flow), null, 1))}</pre>`
        ),
      ];
    },

    async '/data'(url) {
      const flow = app.flows.get(url.searchParams.get('state'));
      if (!flow?.token?.body?.access_token) {
        return [400, page('Chart Viewer', '<h1>Chart Viewer</h1><p id="error">No token</p>')];
      }
      const res = await read(flow.token.body.access_token, `Patient/${flow.token.body.patient}`);
      return [
        200,
        page('Chart Viewer', `<h1>Chart Viewer</h1><p>Reading the patient again with the token the app holds.</p><p>HTTP status: <span id="status">${res.status}</span></p>`),
      ];
    },

    async '/refresh'(url) {
      const flow = app.flows.get(url.searchParams.get('state'));
      const refresh = flow?.token?.body?.refresh_token;
      if (!refresh) {
        return [400, page('Chart Viewer', '<h1>Chart Viewer</h1><p id="error">No refresh token</p>')];
      }
      const res = await tokenRequest(flow, { grant_type: 'refresh_token', refresh_token: refresh });
      if (res.status === 200) {
        flow.token = res;
      }
      return [
        200,
        page('Chart Viewer', `<h1>Chart Viewer</h1><p>Using the refresh token the app holds.</p><p>HTTP status: <span id="status">${res.status}</span> <span id="oauth-error">${escapeHtml(res.body?.error ?? '')}</span></p>`),
      ];
    },

    async '/js/fhir-client.js'() {
      return [200, readFileSync(fhirClientBundle), { 'content-type': 'text/javascript; charset=utf-8' }];
    },

    async '/js/launch.html'() {
      // Standalone: ?scope=… (the library is given `iss`). EHR: ?iss=…&launch=… from Kiln's
      // launch page (the library reads both from the URL itself).
      const config = { clientId: app.pocket.id, fhirBase, redirectUri: `${app.url}/js/index.html` };
      return [
        200,
        page(
          'fhirclient.js app',
          `<h1>fhirclient.js app</h1><p id="status">Redirecting to the authorization server…</p><pre id="result"></pre>`,
          {
            script: `<script src="/js/fhir-client.js"></script>
<script>
const CONFIG = ${JSON.stringify(config)};
const q = new URLSearchParams(location.search);
const ehr = q.has('launch');
FHIR.oauth2.authorize({
  clientId: CONFIG.clientId,
  redirectUri: CONFIG.redirectUri,
  scope: q.get('scope') || (ehr ? 'launch openid fhirUser patient/*.rs user/Practitioner.rs' : 'launch/patient openid fhirUser patient/*.rs'),
  ...(ehr ? {} : { iss: CONFIG.fhirBase }),
  pkceMode: 'required',
}).catch((e) => {
  document.getElementById('result').textContent = JSON.stringify({ error: String(e) });
  document.getElementById('result').dataset.done = '1';
});
</script>`,
          }
        ),
      ];
    },

    async '/js/index.html'() {
      return [
        200,
        page(
          'fhirclient.js app',
          `<h1>fhirclient.js app</h1><p id="status">Completing the authorization…</p><pre id="result"></pre>`,
          {
            script: `<script src="/js/fhir-client.js"></script>
<script>
function done(result) {
  const el = document.getElementById('result');
  el.textContent = JSON.stringify(result, null, 1);
  el.dataset.done = '1';
  document.getElementById('status').textContent = result.error ? 'Failed' : 'Connected';
}
FHIR.oauth2.ready().then(async (client) => {
  const out = {
    serverUrl: client.state.serverUrl,
    clientId: client.state.clientId,
    scope: client.state.tokenResponse.scope,
    patientId: client.patient.id,
    encounterId: client.encounter.id,
    fhirUser: client.getFhirUser(),
    codeChallengeSent: !!client.state.codeChallenge,
  };
  const patient = await client.patient.read();
  out.patientName = patient.name && patient.name[0] ? [].concat(patient.name[0].given || [], patient.name[0].family).join(' ') : null;
  const viaRequest = await client.request('Patient/' + client.patient.id);
  out.requestId = viaRequest.id;
  const obs = await client.request('Observation?patient=' + client.patient.id, { flat: true, pageLimit: 0 });
  out.observations = obs.length;
  if (client.encounter.id) {
    const enc = await client.encounter.read();
    out.encounterRead = enc.resourceType + '/' + enc.id;
  }
  if (client.state.tokenResponse.refresh_token) {
    const before = client.state.tokenResponse.access_token;
    // As the library does by default: a public client's refresh request carries only
    // grant_type and refresh_token (no client_id).
    try {
      await client.refresh();
      out.refreshDefault = 'ok';
    } catch (e) {
      out.refreshDefault = (e.status || '') + ' ' + String(e.message).trim().split(String.fromCharCode(10)).pop();
    }
    out.refreshed = client.state.tokenResponse.access_token !== before;
    out.readAfterRefresh = (await client.patient.read()).id;
  }
  if (out.scope.split(' ').includes('user/Practitioner.rs')) {
    const user = await client.user.read();
    out.userRead = user.resourceType + '/' + user.id;
  }
  try {
    await client.request('Condition?patient=' + client.patient.id);
    out.conditionStatus = 200;
  } catch (e) {
    out.conditionStatus = e.status || e.statusCode || String(e);
  }
  done(out);
}).catch((e) => done({ error: String(e), stack: e.stack }));
</script>`,
          }
        ),
      ];
    },
  };

  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, app.url);
    app.requests.push(`${req.method} ${url.pathname}${url.search}`);
    const route = routes[url.pathname];
    try {
      if (!route || req.method !== 'GET') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
        return;
      }
      const [status, body, headers = {}] = await route(url);
      res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', ...headers });
      res.end(body);
    } catch (e) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`app error: ${e.stack ?? e}`);
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  app.url = `http://127.0.0.1:${server.address().port}`;
  app.close = () =>
    new Promise((resolve) => {
      server.closeAllConnections?.();
      server.close(() => resolve());
    });
  return app;
}
