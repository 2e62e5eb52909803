// Seeds a running Kiln through its HTTP API, as an administrator would: a project and its
// admin, three registered apps, a patient user and a practitioner user with passwords, another
// patient, and some clinical data.

import { randomBytes } from 'node:crypto';

/** One HTTP call to Kiln: `{status, body, headers}` (body parsed as JSON when it is). */
export async function call(baseUrl, method, path, { token, json, form, basic } = {}) {
  const headers = { accept: 'application/json' };
  let body;
  if (token) {
    headers.authorization = `Bearer ${token}`;
  }
  if (basic) {
    headers.authorization = `Basic ${Buffer.from(`${basic[0]}:${basic[1]}`).toString('base64')}`;
  }
  if (json !== undefined) {
    headers['content-type'] = path.startsWith('fhir/') ? 'application/fhir+json' : 'application/json';
    body = JSON.stringify(json);
  }
  if (form !== undefined) {
    headers['content-type'] = 'application/x-www-form-urlencoded';
    body = new URLSearchParams(form).toString();
  }
  const res = await fetch(new URL(path, baseUrl), { method, headers, body, redirect: 'manual' });
  const text = await res.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, body: parsed, headers: res.headers };
}

function expect(res, status, what) {
  if (res.status !== status) {
    throw new Error(`${what}: expected HTTP ${status}, got ${res.status}: ${JSON.stringify(res.body)}`);
  }
  return res.body;
}

/** Medplum's first-party sign-in (`/auth/login` then `/oauth2/token`): an access token. */
export async function login(baseUrl, email, password, projectId) {
  const verifier = randomBytes(32).toString('hex');
  const started = expect(
    await call(baseUrl, 'POST', 'auth/login', {
      json: { email, password, projectId, codeChallenge: verifier, codeChallengeMethod: 'plain' },
    }),
    200,
    `login ${email}`
  );
  const tokens = expect(
    await call(baseUrl, 'POST', 'oauth2/token', {
      form: { grant_type: 'authorization_code', code: started.code, code_verifier: verifier },
    }),
    200,
    `token for ${email}`
  );
  return tokens.access_token;
}

/**
 * The world the scenarios use.
 *
 * @param {string} baseUrl  Kiln's base URL (ends with "/")
 * @param {{appUrl: string, pyRedirect: string}} apps  where the local apps live
 */
export async function seed(baseUrl, { appUrl, pyRedirect }, admin) {
  const root = await login(baseUrl, admin.email, admin.password);
  const project = expect(
    await call(baseUrl, 'POST', 'admin/projects', { token: root, json: { name: 'SMART Clinic' } }),
    201,
    'create project'
  );
  const projectId = project.id;
  const invite = (token, body) =>
    call(baseUrl, 'POST', `admin/projects/${projectId}/invite`, { token, json: body });
  expect(
    await invite(root, {
      firstName: 'Ada',
      lastName: 'Admin',
      email: 'ada@smart.example',
      password: 'ada-password',
      admin: true,
    }),
    201,
    'invite the project admin'
  );
  const ada = await login(baseUrl, 'ada@smart.example', 'ada-password', projectId);

  const client = async (body) =>
    expect(
      await call(baseUrl, 'POST', `admin/projects/${projectId}/client`, { token: ada, json: body }),
      201,
      `register ${body.name}`
    );
  const chart = await client({
    name: 'Chart Viewer',
    redirectUris: [`${appUrl}/callback`],
    launchUri: `${appUrl}/launch`,
  });
  const pocket = await client({
    name: 'fhirclient.js app',
    redirectUris: [`${appUrl}/js/index.html`],
    launchUri: `${appUrl}/js/launch.html`,
    public: true,
  });
  const py = await client({ name: 'client-py app', redirectUris: [pyRedirect] });

  const paula = expect(
    await invite(ada, {
      resourceType: 'Patient',
      firstName: 'Paula',
      lastName: 'Smart',
      email: 'paula@smart.example',
      password: 'paula-password',
    }),
    201,
    'invite the patient'
  );
  const patientId = paula.profile.reference.replace('Patient/', '');
  const dana = expect(
    await invite(ada, {
      resourceType: 'Practitioner',
      firstName: 'Dana',
      lastName: 'Doctor',
      email: 'dana@smart.example',
      password: 'dana-password',
    }),
    201,
    'invite the practitioner'
  );

  const create = async (resource) =>
    expect(
      await call(baseUrl, 'POST', `fhir/R4/${resource.resourceType}`, { token: ada, json: resource }),
      201,
      `create ${resource.resourceType}`
    ).id;
  const existing = expect(
    await call(baseUrl, 'GET', `fhir/R4/Patient/${patientId}`, { token: ada }),
    200,
    'read the patient'
  );
  expect(
    await call(baseUrl, 'PUT', `fhir/R4/Patient/${patientId}`, {
      token: ada,
      json: { ...existing, birthDate: '1985-06-07', gender: 'female' },
    }),
    200,
    'give the patient a birth date'
  );
  const otherPatient = await create({
    resourceType: 'Patient',
    name: [{ family: 'Other', given: ['Oscar'] }],
    birthDate: '1970-02-03',
  });
  const obs = (subject, code) => ({
    resourceType: 'Observation',
    status: 'final',
    category: [
      { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code }] },
    ],
    code: { text: code === 'vital-signs' ? 'Heart rate' : 'Hemoglobin' },
    subject: { reference: `Patient/${subject}` },
  });
  const observations = [
    await create(obs(patientId, 'laboratory')),
    await create(obs(patientId, 'vital-signs')),
  ];
  await create(obs(otherPatient, 'laboratory'));
  await create({
    resourceType: 'Condition',
    subject: { reference: `Patient/${patientId}` },
    code: { text: 'Asthma' },
  });
  const encounterId = await create({
    resourceType: 'Encounter',
    status: 'finished',
    class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
    subject: { reference: `Patient/${patientId}` },
  });

  return {
    projectId,
    adminToken: ada,
    chart: { id: chart.id, secret: chart.secret },
    pocket: { id: pocket.id, secret: pocket.secret },
    py: { id: py.id, secret: py.secret },
    patientId,
    practitionerRef: dana.profile.reference,
    otherPatient,
    observations,
    encounterId,
    paula: { email: 'paula@smart.example', password: 'paula-password' },
    dana: { email: 'dana@smart.example', password: 'dana-password' },
  };
}
