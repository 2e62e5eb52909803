// A fetch wrapper that records every HTTP exchange the SDK makes, so that a failing check can
// print exactly what was sent to Kiln and what came back.
//
// The SDK is given `recordingFetch` as its `fetch` option; tests call `mark()` before acting and
// `since(mark)` to look at the exchanges their action caused.

import { appendFileSync, writeFileSync } from 'node:fs';

const MAX_BODY = 1500;

/** @type {Array<{seq:number, request:{method:string,url:string,headers:Record<string,string>,body?:string}, response?:{status:number,headers:Record<string,string>,body:string}, error?:string}>} */
const exchanges = [];

const logFile = process.env.KILN_INTEROP_LOG;
if (logFile) {
  writeFileSync(logFile, '');
}

function headersToObject(headers) {
  const out = {};
  if (!headers) {
    return out;
  }
  if (headers instanceof Headers) {
    headers.forEach((v, k) => {
      out[k] = v;
    });
  } else if (Array.isArray(headers)) {
    for (const [k, v] of headers) {
      out[k] = v;
    }
  } else {
    Object.assign(out, headers);
  }
  return out;
}

function redact(headers) {
  const out = { ...headers };
  for (const k of Object.keys(out)) {
    if (k.toLowerCase() === 'authorization') {
      const [scheme, value] = String(out[k]).split(' ');
      out[k] = `${scheme} ${value ? value.slice(0, 12) + '…' : ''}`;
    }
  }
  return out;
}

function describeBody(body) {
  if (body === undefined || body === null) {
    return undefined;
  }
  if (typeof body === 'string') {
    return clip(body);
  }
  if (body instanceof Uint8Array) {
    return `<${body.byteLength} bytes>`;
  }
  if (typeof Blob !== 'undefined' && body instanceof Blob) {
    return `<Blob ${body.size} bytes, type ${body.type || '-'}>`;
  }
  if (body instanceof URLSearchParams) {
    return clip(body.toString());
  }
  return `<${body?.constructor?.name ?? typeof body}>`;
}

function clip(text) {
  return text.length > MAX_BODY ? text.slice(0, MAX_BODY) + `… (${text.length} chars)` : text;
}

function isTextual(contentType) {
  return !contentType || /json|text|xml|x-www-form-urlencoded/.test(contentType);
}

/**
 * A drop-in `fetch` that records the request and the response.
 * @param {string | URL | Request} input
 * @param {RequestInit} [init]
 * @returns {Promise<Response>}
 */
export async function recordingFetch(input, init = {}) {
  const entry = {
    seq: exchanges.length,
    request: {
      method: (init.method ?? 'GET').toUpperCase(),
      url: String(input),
      headers: redact(headersToObject(init.headers)),
      body: describeBody(init.body),
    },
  };
  exchanges.push(entry);
  let response;
  try {
    response = await fetch(input, init);
  } catch (err) {
    entry.error = String(err?.cause ?? err);
    flush(entry);
    throw err;
  }
  const headers = headersToObject(response.headers);
  let body;
  if (isTextual(headers['content-type'])) {
    body = clip(await response.clone().text());
  } else {
    body = `<${(await response.clone().arrayBuffer()).byteLength} bytes>`;
  }
  entry.response = { status: response.status, headers, body };
  flush(entry);
  return response;
}

function flush(entry) {
  if (logFile) {
    appendFileSync(logFile, format(entry) + '\n\n');
  }
}

/** @returns {number} a position in the log; pass it to `since`. */
export function mark() {
  return exchanges.length;
}

/** @param {number} position @returns the exchanges recorded after `position`. */
export function since(position) {
  return exchanges.slice(position);
}

/** Human-readable rendering of one exchange. */
export function format(entry) {
  const { request, response, error } = entry;
  const lines = [`> ${request.method} ${request.url}`];
  for (const [k, v] of Object.entries(request.headers)) {
    lines.push(`> ${k}: ${v}`);
  }
  if (request.body !== undefined) {
    lines.push(`> ${request.body}`);
  }
  if (error) {
    lines.push(`! ${error}`);
  } else if (response) {
    lines.push(`< ${response.status}`);
    for (const [k, v] of Object.entries(response.headers)) {
      if (['content-type', 'location', 'etag', 'last-modified', 'www-authenticate', 'content-location'].includes(k)) {
        lines.push(`< ${k}: ${v}`);
      }
    }
    if (response.body) {
      lines.push(`< ${response.body}`);
    }
  }
  return lines.join('\n');
}
