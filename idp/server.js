// storefront-idp: a small, real OpenID Provider for local development and
// tests, built on oidc-provider (OpenID Certified). Configuration is read from
// environment variables only; see README.md for the full list.
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname } from 'node:path';
import Provider from 'oidc-provider';

import { authenticate, findAccount } from './accounts.js';
import { MemoryStore } from './store.js';

// ---------------------------------------------------------------------------
// configuration
// ---------------------------------------------------------------------------

const env = process.env;

function fail(message) {
  console.error(`storefront-idp: ${message}`);
  process.exit(1);
}

function intEnv(name, fallback, { min = 1, max = Number.MAX_SAFE_INTEGER } = {}) {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  if (!/^\d+$/.test(raw.trim())) fail(`${name} must be an integer, got ${JSON.stringify(raw)}`);
  const value = Number(raw.trim());
  if (value < min || value > max) fail(`${name} must be between ${min} and ${max}, got ${value}`);
  return value;
}

function boolEnv(name, fallback) {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const v = raw.trim().toLowerCase();
  if (['1', 'true', 'yes', 'on'].includes(v)) return true;
  if (['0', 'false', 'no', 'off'].includes(v)) return false;
  return fail(`${name} must be 1/0 (or true/false), got ${JSON.stringify(raw)}`);
}

function listEnv(name, fallback) {
  const raw = env[name] ?? fallback;
  return raw.split(',').map((s) => s.trim()).filter(Boolean);
}

function checkUrl(name, value) {
  let url;
  try {
    url = new URL(value);
  } catch {
    fail(`${name}: ${JSON.stringify(value)} is not an absolute URL`);
  }
  if (!['http:', 'https:'].includes(url.protocol)) fail(`${name}: ${value} must be http(s)`);
  return url;
}

const PORT = intEnv('IDP_PORT', 4000, { max: 65535 });
const HOST = env.IDP_HOST?.trim() || '127.0.0.1';
const ISSUER = env.IDP_ISSUER?.trim() || `http://127.0.0.1:${PORT}`;
{
  const url = checkUrl('IDP_ISSUER', ISSUER);
  if (url.pathname !== '/' || url.search || url.hash) {
    fail('IDP_ISSUER must be scheme://host[:port] without a path, query or fragment');
  }
}
const CLIENT_ID = env.IDP_CLIENT_ID?.trim() || 'storefront';
const CLIENT_SECRET = env.IDP_CLIENT_SECRET || 'storefront-dev-secret';
const REDIRECT_URIS = listEnv('IDP_REDIRECT_URIS', 'http://127.0.0.1:8080/callback');
const POST_LOGOUT_REDIRECT_URIS = listEnv('IDP_POST_LOGOUT_REDIRECT_URIS', 'http://127.0.0.1:8080/');
const BACKCHANNEL_LOGOUT_URI = (env.IDP_BACKCHANNEL_LOGOUT_URI ?? 'http://127.0.0.1:8080/backchannel-logout').trim();
const ACCESS_TOKEN_TTL = intEnv('IDP_ACCESS_TOKEN_TTL', 3600);
const ID_TOKEN_TTL = 3600;
const REFRESH_TOKEN_TTL = 14 * 24 * 60 * 60;
const SESSION_TTL = 24 * 60 * 60;
const KEY_FILE = env.IDP_KEY_FILE?.trim() || undefined;
const TEST_ENDPOINTS = boolEnv('IDP_TEST_ENDPOINTS', env.NODE_ENV !== 'production');
const AUTO_CONSENT = boolEnv('IDP_AUTO_CONSENT', true);
const LOG_REQUESTS = boolEnv('IDP_LOG_REQUESTS', true);
const TRUST_PROXY = boolEnv('IDP_TRUST_PROXY', false);
// How the client authenticates: client_secret_basic (which also accepts
// client_secret_post) or private_key_jwt, with its public keys fetched from
// IDP_CLIENT_JWKS_URI (the shop's /.well-known/jwks.json).
const CLIENT_AUTH = env.IDP_CLIENT_AUTH?.trim() || 'client_secret_basic';
const CLIENT_JWKS_URI = env.IDP_CLIENT_JWKS_URI?.trim() || '';
// Refuse authorization requests that were not pushed first (RFC 9126).
const REQUIRE_PAR = boolEnv('IDP_REQUIRE_PAR', false);
if (!['client_secret_basic', 'private_key_jwt'].includes(CLIENT_AUTH)) {
  fail(`IDP_CLIENT_AUTH must be client_secret_basic or private_key_jwt, got ${JSON.stringify(CLIENT_AUTH)}`);
}
if (CLIENT_AUTH === 'private_key_jwt') checkUrl('IDP_CLIENT_JWKS_URI', CLIENT_JWKS_URI);

if (REDIRECT_URIS.length === 0) fail('IDP_REDIRECT_URIS must list at least one URI');
REDIRECT_URIS.forEach((u) => checkUrl('IDP_REDIRECT_URIS', u));
POST_LOGOUT_REDIRECT_URIS.forEach((u) => checkUrl('IDP_POST_LOGOUT_REDIRECT_URIS', u));
if (BACKCHANNEL_LOGOUT_URI) checkUrl('IDP_BACKCHANNEL_LOGOUT_URI', BACKCHANNEL_LOGOUT_URI);

const SCOPES = ['openid', 'profile', 'email', 'groups', 'offline_access'];
const CLAIMS = {
  openid: ['sub'],
  profile: ['name', 'preferred_username'],
  email: ['email', 'email_verified'],
  groups: ['groups'],
};

// ---------------------------------------------------------------------------
// signing key
// ---------------------------------------------------------------------------

function jwkThumbprint(jwk) {
  // RFC 7638 for RSA keys: members e, kty, n in lexicographic order.
  const canonical = JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n });
  return createHash('sha256').update(canonical).digest('base64url');
}

function generateSigningKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: jwkThumbprint(jwk), alg: 'RS256', use: 'sig' };
}

function loadSigningKey() {
  if (!KEY_FILE) return { jwk: generateSigningKey(), origin: 'generated (in memory)' };

  if (existsSync(KEY_FILE)) {
    let parsed;
    try {
      parsed = JSON.parse(readFileSync(KEY_FILE, 'utf8'));
    } catch (err) {
      fail(`IDP_KEY_FILE ${KEY_FILE}: cannot read JSON (${err.message})`);
    }
    const jwk = Array.isArray(parsed?.keys) ? parsed.keys[0] : parsed;
    if (jwk?.kty !== 'RSA' || !jwk.d) fail(`IDP_KEY_FILE ${KEY_FILE}: expected a private RSA JWK`);
    return {
      jwk: { ...jwk, kid: jwk.kid || jwkThumbprint(jwk), alg: 'RS256', use: 'sig' },
      origin: `loaded from ${KEY_FILE}`,
    };
  }

  const jwk = generateSigningKey();
  try {
    mkdirSync(dirname(KEY_FILE), { recursive: true });
    writeFileSync(KEY_FILE, `${JSON.stringify(jwk, null, 2)}\n`, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    fail(`IDP_KEY_FILE ${KEY_FILE}: cannot write key (${err.message})`);
  }
  return { jwk, origin: `generated and saved to ${KEY_FILE}` };
}

const signingKey = loadSigningKey();

// ---------------------------------------------------------------------------
// HTML helpers
// ---------------------------------------------------------------------------

function esc(value) {
  return String(value ?? '')
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

const STYLE = 'body{font-family:sans-serif;max-width:26em;margin:3em auto;padding:0 1em}'
  + 'label,input,button{display:block;width:100%;box-sizing:border-box;margin:.3em 0}'
  + 'input,button{padding:.5em;font-size:1em}.error{color:#b00020}';

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)} - storefront-idp</title>
<style>${STYLE}</style>
</head>
<body>
<h1>${esc(title)}</h1>
${body}
</body>
</html>
`;
}

function sendHtml(res, status, html) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('X-Frame-Options', 'DENY');
  res.setHeader('Content-Security-Policy', "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'");
  res.end(html);
}

function sendJson(res, status, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json');
  res.setHeader('Cache-Control', 'no-store');
  res.end(`${JSON.stringify(body)}\n`);
}

// ---------------------------------------------------------------------------
// provider
// ---------------------------------------------------------------------------

const store = new MemoryStore();

const client = {
  client_id: CLIENT_ID,
  client_name: 'Storefront',
  application_type: 'web',
  ...(CLIENT_AUTH === 'private_key_jwt' ? {
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'RS256',
    jwks_uri: CLIENT_JWKS_URI,
  } : {
    client_secret: CLIENT_SECRET,
    // oidc-provider accepts client_secret_post too for a client registered
    // with client_secret_basic (both are "client secret" methods).
    token_endpoint_auth_method: 'client_secret_basic',
  }),
  ...(REQUIRE_PAR ? { require_pushed_authorization_requests: true } : {}),
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  redirect_uris: REDIRECT_URIS,
  post_logout_redirect_uris: POST_LOGOUT_REDIRECT_URIS,
  ...(BACKCHANNEL_LOGOUT_URI ? {
    backchannel_logout_uri: BACKCHANNEL_LOGOUT_URI,
    backchannel_logout_session_required: true,
  } : {}),
};

const configuration = {
  adapter: store.adapterClass(),
  clients: [client],
  findAccount,
  jwks: { keys: [signingKey.jwk] },
  cookies: {
    keys: [randomBytes(32).toString('base64url')],
  },
  scopes: SCOPES,
  claims: CLAIMS,
  responseTypes: ['code'],
  // Claims of the granted scopes go into the ID token as well (not only
  // into the userinfo response).
  conformIdTokenClaims: false,
  clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
  pkce: {
    // v9 requires PKCE only for public clients by default; require it for
    // every client (S256 is the only method v9 supports).
    required: () => true,
  },
  // Always hand this client a refresh token for the authorization_code
  // grant, even without the offline_access scope.
  issueRefreshToken: async (_ctx, c) => c.grantTypeAllowed('refresh_token'),
  // Rotate on every use; a rotated (consumed) refresh token presented again
  // fails with invalid_grant and revokes the whole grant (reuse detection).
  rotateRefreshToken: true,
  ttl: {
    AccessToken: ACCESS_TOKEN_TTL,
    AuthorizationCode: 60,
    IdToken: ID_TOKEN_TTL,
    RefreshToken: REFRESH_TOKEN_TTL,
    Session: SESSION_TTL,
    Grant: REFRESH_TOKEN_TTL,
    Interaction: 60 * 60,
  },
  features: {
    devInteractions: { enabled: false },
    pushedAuthorizationRequests: {
      enabled: true,
      requirePushedAuthorizationRequests: REQUIRE_PAR,
    },
    revocation: {
      enabled: true,
      allowedPolicy: async (_ctx, c, token) => token.clientId === c.clientId,
    },
    introspection: {
      enabled: true,
      allowedPolicy: async (_ctx, c, token) => token.clientId === c.clientId,
    },
    userinfo: { enabled: true },
    claimsParameter: { enabled: false },
    resourceIndicators: { enabled: false },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource: async (ctx, form) => {
        ctx.type = 'html';
        ctx.body = page('Sign out', `<p>Do you want to sign out from ${esc(ctx.host)}?</p>
${form}
<button id="logout" type="submit" form="op.logoutForm" name="logout" value="yes" autofocus>Yes, sign me out</button>
<button id="stay" type="submit" form="op.logoutForm">No, stay signed in</button>`);
      },
      postLogoutSuccessSource: async (ctx) => {
        ctx.type = 'html';
        ctx.body = page('Signed out', '<p id="signed-out">You have been signed out.</p>');
      },
    },
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    const rows = Object.entries(out)
      .map(([k, v]) => `<p><strong>${esc(k)}</strong>: <span id="${esc(k)}">${esc(v)}</span></p>`)
      .join('\n');
    ctx.body = page('Error', `<div class="error">${rows}</div>`);
  },
  // Back-channel logout POSTs go to the relying party, which in development
  // lives on loopback. oidc-provider's SSRF guard refuses special-use
  // addresses (127.0.0.0/8 included), so use the plain global dispatcher.
  fetch: (url, options) => {
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
};

const provider = new Provider(ISSUER, configuration);
provider.proxy = TRUST_PROXY;

// ---------------------------------------------------------------------------
// statistics (for /_test/stats) and event logging
// ---------------------------------------------------------------------------

function freshStats() {
  return {
    grants: { authorization_code: 0, refresh_token: 0 },
    grant_errors: {},
    revocations: 0,
    tokens_revoked: 0,
    backchannel_logouts_sent: 0,
    backchannel_logouts_failed: 0,
    logins: 0,
    login_failures: 0,
  };
}

let stats = freshStats();

// error_detail is oidc-provider's internal reason (e.g. "refresh token already
// used"); it never contains token values.
const describe = (err) => `${err.error ?? err.name}: ${err.error_description ?? err.message}${err.error_detail ? ` (${err.error_detail})` : ''}`;

provider.on('grant.success', (ctx) => {
  const type = ctx.oidc.params.grant_type;
  stats.grants[type] = (stats.grants[type] ?? 0) + 1;
});
provider.on('grant.error', (ctx, err) => {
  const type = ctx.oidc?.params?.grant_type ?? 'unknown';
  stats.grant_errors[type] = (stats.grant_errors[type] ?? 0) + 1;
  console.log(`grant.error grant_type=${type} ${describe(err)}`);
});
// oidc-provider v9 has no 'revocation.success' event: count accepted
// revocation requests (HTTP 200 from the revocation endpoint, RFC 7009 says
// that includes already invalid tokens) with a koa middleware, and the
// tokens that such requests actually found and destroyed via model events.
const REVOCATION_PATH = provider.pathFor('revocation');
provider.use(async (ctx, next) => {
  await next();
  if (ctx.method === 'POST' && ctx.path === REVOCATION_PATH && ctx.status === 200) {
    stats.revocations += 1;
  }
});
for (const model of ['access_token', 'refresh_token']) {
  provider.on(`${model}.destroyed`, () => {
    if (Provider.ctx?.oidc?.route === 'revocation') stats.tokens_revoked += 1;
  });
}
provider.on('backchannel.success', (_ctx, c, accountId) => {
  stats.backchannel_logouts_sent += 1;
  console.log(`backchannel.success client=${c.clientId} sub=${accountId}`);
});
provider.on('backchannel.error', (_ctx, err, c, accountId) => {
  stats.backchannel_logouts_failed += 1;
  console.log(`backchannel.error client=${c.clientId} sub=${accountId}: ${err.message}`);
});
for (const event of ['authorization.error', 'end_session.error', 'userinfo.error', 'revocation.error', 'introspection.error']) {
  provider.on(event, (_ctx, err) => {
    console.log(`${event} ${describe(err)}`);
  });
}
provider.on('server_error', (_ctx, err) => {
  console.error('server_error', err);
});

// ---------------------------------------------------------------------------
// interactions: /interaction/:uid, /interaction/:uid/{login,confirm,abort}
// ---------------------------------------------------------------------------

const MAX_FORM_BYTES = 16 * 1024;

function readForm(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_FORM_BYTES) {
        reject(Object.assign(new Error('request body too large'), { status: 413 }));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(new URLSearchParams(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });
}

function renderLogin(res, details, clientName, { status = 200, login = '', error } = {}) {
  const uid = esc(details.uid);
  sendHtml(res, status, page('Sign in', `<p>to continue to <strong>${esc(clientName)}</strong></p>
${error ? `<p id="error" class="error" role="alert">${esc(error)}</p>` : ''}
<form id="login-form" method="post" action="/interaction/${uid}/login" autocomplete="off">
<label for="login">Username</label>
<input id="login" name="login" type="text" value="${esc(login)}" required${login ? '' : ' autofocus'}>
<label for="password">Password</label>
<input id="password" name="password" type="password" required${login ? ' autofocus' : ''}>
<button id="submit" type="submit">Sign in</button>
</form>
<form method="post" action="/interaction/${uid}/abort">
<button id="abort" type="submit">Cancel</button>
</form>`));
}

function renderConsent(res, details, clientName) {
  const uid = esc(details.uid);
  const scopes = (details.params.scope ?? '').split(' ').filter(Boolean);
  sendHtml(res, 200, page('Authorize', `<p><strong>${esc(clientName)}</strong> asks for access to your account
(<span id="account">${esc(details.session?.accountId)}</span>):</p>
<ul id="scopes">${scopes.map((s) => `<li>${esc(s)}</li>`).join('')}</ul>
<form id="consent-form" method="post" action="/interaction/${uid}/confirm">
<button id="confirm" type="submit" autofocus>Allow</button>
</form>
<form method="post" action="/interaction/${uid}/abort">
<button id="abort" type="submit">Deny</button>
</form>`));
}

// Creates or extends the Grant of (account, client) with everything the
// authorization request asked for, and returns its id.
async function grantRequested(details, accountId) {
  const clientId = details.params.client_id;
  let grant;
  if (details.grantId) {
    grant = await provider.Grant.find(details.grantId);
    if (grant && (grant.accountId !== accountId || grant.clientId !== clientId)) grant = undefined;
  }
  grant ??= new provider.Grant({ accountId, clientId });

  const requested = (details.params.scope ?? '').split(' ').filter((s) => SCOPES.includes(s));
  const missing = details.prompt?.details ?? {};
  const scopes = new Set([...requested, ...(missing.missingOIDCScope ?? [])]);
  if (scopes.size) grant.addOIDCScope([...scopes].join(' '));
  if (missing.missingOIDCClaims?.length) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, list] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, list.join(' '));
  }
  return grant.save();
}

async function handleInteraction(req, res, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    sendHtml(res, 400, page('Sign-in request expired', `<p id="error" class="error">${esc(err.error_description ?? err.message)}.
Go back to the application and start signing in again.</p>`));
    return;
  }
  if (details.uid !== uid) {
    sendHtml(res, 400, page('Error', '<p id="error" class="error">This sign-in form does not belong to the current sign-in request.</p>'));
    return;
  }

  const c = await provider.Client.find(details.params.client_id);
  const clientName = c?.clientName ?? details.params.client_id;
  const promptName = details.prompt.name;

  if (action === undefined) {
    if (req.method !== 'GET') {
      res.setHeader('Allow', 'GET');
      sendHtml(res, 405, page('Error', '<p class="error">Method not allowed.</p>'));
      return;
    }
    if (promptName === 'login') {
      renderLogin(res, details, clientName, { login: details.params.login_hint ?? '' });
      return;
    }
    if (promptName === 'consent') {
      if (AUTO_CONSENT) {
        const grantId = await grantRequested(details, details.session.accountId);
        await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
        return;
      }
      renderConsent(res, details, clientName);
      return;
    }
    sendHtml(res, 400, page('Error', `<p class="error">Unsupported prompt ${esc(promptName)}.</p>`));
    return;
  }

  if (action === 'abort') {
    if (req.method !== 'POST' && req.method !== 'GET') {
      res.setHeader('Allow', 'GET, POST');
      sendHtml(res, 405, page('Error', '<p class="error">Method not allowed.</p>'));
      return;
    }
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }

  if (req.method !== 'POST') {
    res.setHeader('Allow', 'POST');
    sendHtml(res, 405, page('Error', '<p class="error">Method not allowed.</p>'));
    return;
  }

  if (action === 'login') {
    if (promptName !== 'login') {
      sendHtml(res, 400, page('Error', '<p id="error" class="error">This sign-in request does not expect a login.</p>'));
      return;
    }
    const form = await readForm(req);
    const login = (form.get('login') ?? '').trim();
    const accountId = authenticate(login, form.get('password') ?? '');
    if (!accountId) {
      stats.login_failures += 1;
      renderLogin(res, details, clientName, { status: 401, login, error: 'Invalid username or password.' });
      return;
    }
    stats.logins += 1;
    const result = { login: { accountId } };
    if (AUTO_CONSENT) {
      // First-party client: consent is granted right away, so a login is
      // one form POST followed by the redirect back to the client.
      result.consent = { grantId: await grantRequested(details, accountId) };
    }
    await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
    return;
  }

  if (action === 'confirm') {
    if (promptName !== 'consent') {
      sendHtml(res, 400, page('Error', '<p id="error" class="error">This sign-in request does not expect a consent.</p>'));
      return;
    }
    const grantId = await grantRequested(details, details.session.accountId);
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }

  sendHtml(res, 404, page('Not found', '<p class="error">Not found.</p>'));
}

// ---------------------------------------------------------------------------
// /_test endpoints
// ---------------------------------------------------------------------------

function revokeGrant(grantId) {
  const tokens = store.revokeGrantMembers(grantId);
  const existed = store.get('Grant', grantId) !== undefined;
  store.remove('Grant', grantId);
  return { existed, tokens };
}

function revokeGrantsOf(sub) {
  let grants = 0;
  let tokens = 0;
  for (const [grantId, payload] of store.entries('Grant')) {
    if (payload.accountId === sub) {
      const r = revokeGrant(grantId);
      grants += 1;
      tokens += r.tokens;
    }
  }
  return { grants, tokens };
}

async function endSessionsOf(sub) {
  const out = {
    sub,
    sessions_ended: 0,
    backchannel_logouts_sent: 0,
    backchannel_logouts_failed: 0,
    grants_revoked: 0,
    errors: [],
  };
  for (const [sessionId, session] of store.entries('Session')) {
    if (session.accountId !== sub) continue;
    for (const [clientId, authorization] of Object.entries(session.authorizations ?? {})) {
      let c;
      try {
        c = await provider.Client.find(clientId);
      } catch {
        c = undefined;
      }
      if (c?.backchannelLogoutUri) {
        try {
          await c.backchannelLogout(sub, authorization.sid);
          out.backchannel_logouts_sent += 1;
          stats.backchannel_logouts_sent += 1;
          console.log(`backchannel.success client=${clientId} sub=${sub} (via /_test/end-sessions)`);
        } catch (err) {
          out.backchannel_logouts_failed += 1;
          stats.backchannel_logouts_failed += 1;
          const message = `${clientId}: ${err.message}${err.cause ? ` (${err.cause.message ?? err.cause})` : ''}`;
          out.errors.push(message);
          console.log(`backchannel.error ${message} (via /_test/end-sessions)`);
        }
      }
      if (authorization.grantId && !authorization.persistsLogout) {
        if (revokeGrant(authorization.grantId).existed) out.grants_revoked += 1;
      }
    }
    store.remove('Session', sessionId);
    out.sessions_ended += 1;
  }
  return out;
}

async function handleTest(req, res, url) {
  const route = url.pathname;
  const expect = (method) => {
    if (req.method === method) return true;
    res.setHeader('Allow', method);
    sendJson(res, 405, { error: 'method_not_allowed', allow: method });
    return false;
  };
  const subject = () => {
    const sub = url.searchParams.get('sub');
    if (!sub) sendJson(res, 400, { error: 'invalid_request', error_description: 'sub query parameter is required' });
    return sub || undefined;
  };

  switch (route) {
    case '/_test/stats':
      if (expect('GET')) sendJson(res, 200, stats);
      return;
    case '/_test/reset-stats':
      if (expect('POST')) {
        stats = freshStats();
        sendJson(res, 200, stats);
      }
      return;
    case '/_test/revoke-grants': {
      if (!expect('POST')) return;
      const sub = subject();
      if (!sub) return;
      const { grants, tokens } = revokeGrantsOf(sub);
      sendJson(res, 200, { sub, grants_revoked: grants, tokens_revoked: tokens });
      return;
    }
    case '/_test/end-sessions': {
      if (!expect('POST')) return;
      const sub = subject();
      if (!sub) return;
      sendJson(res, 200, await endSessionsOf(sub));
      return;
    }
    case '/_test/store':
      if (expect('GET')) sendJson(res, 200, store.counts());
      return;
    default:
      sendJson(res, 404, { error: 'not_found' });
  }
}

// ---------------------------------------------------------------------------
// HTTP server
// ---------------------------------------------------------------------------

const oidcCallback = provider.callback();
const INTERACTION_PATH = /^\/interaction\/([A-Za-z0-9_-]{1,64})(?:\/(login|confirm|abort))?\/?$/;

const server = createServer(async (req, res) => {
  const started = process.hrtime.bigint();
  let pathname = '/';
  let url;
  try {
    url = new URL(req.url ?? '/', 'http://localhost');
    pathname = url.pathname;
  } catch {
    url = undefined;
  }
  if (LOG_REQUESTS) {
    // Path only: query strings may carry codes, states or hints.
    res.on('finish', () => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      console.log(`${req.method} ${pathname} ${res.statusCode} ${ms.toFixed(1)}ms`);
    });
  }

  try {
    if (!url) {
      sendJson(res, 400, { error: 'invalid_request' });
      return;
    }
    const m = INTERACTION_PATH.exec(pathname);
    if (m) {
      await handleInteraction(req, res, m[1], m[2]);
      return;
    }
    if (pathname.startsWith('/interaction/')) {
      sendHtml(res, 404, page('Not found', '<p class="error">Not found.</p>'));
      return;
    }
    if (TEST_ENDPOINTS && (pathname === '/_test' || pathname.startsWith('/_test/'))) {
      await handleTest(req, res, url);
      return;
    }
    await oidcCallback(req, res);
  } catch (err) {
    console.error(`error handling ${req.method} ${pathname}:`, err);
    if (!res.headersSent) {
      const status = err.status ?? 500;
      sendHtml(res, status, page('Error', `<p class="error">${status === 500 ? 'Internal error.' : esc(err.message)}</p>`));
    } else {
      res.destroy();
    }
  }
});

server.keepAliveTimeout = 5000;

server.on('error', (err) => {
  fail(`cannot listen on ${HOST}:${PORT}: ${err.message}`);
});

server.listen(PORT, HOST, () => {
  console.log(`storefront-idp: signing key ${signingKey.jwk.kid} ${signingKey.origin}`);
  console.log(`storefront-idp: client ${CLIENT_ID}, redirect_uris ${REDIRECT_URIS.join(' ')}`);
  console.log(`storefront-idp: test endpoints ${TEST_ENDPOINTS ? 'enabled (/_test/*)' : 'disabled'}, auto consent ${AUTO_CONSENT ? 'on' : 'off'}`);
  console.log(`storefront-idp listening on ${ISSUER}`);
});

let stopping = false;
function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  console.log(`storefront-idp: ${signal} received, shutting down`);
  store.close();
  server.close(() => process.exit(0));
  server.closeIdleConnections();
  // Do not wait forever for long-lived keep-alive connections.
  setTimeout(() => {
    server.closeAllConnections();
    process.exit(0);
  }, 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
