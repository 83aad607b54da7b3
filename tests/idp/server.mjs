// Local OpenID Connect provider for the gateway's end-to-end tests.
//
// Usage:  node server.mjs CONFIG.json      (or IDP_CONFIG=CONFIG.json node server.mjs)
//
// Listens on 127.0.0.1 only; the issuer is exactly http://localhost:PORT.
// "port": 0 (or absent) lets the OS pick a free port, which is then reported
// on stdout as a single line:  READY http://localhost:PORT
//
// Config JSON (every key optional):
// {
//   "port": 0,
//   "clients": [{ "client_id": "...", "client_secret": "...",
//                 "redirect_uris": ["http://127.0.0.1:1234/cb"],
//                 "post_logout_redirect_uris": [],
//                 "token_endpoint_auth_method": "client_secret_basic" | "client_secret_post",
//                 "grant_types": ["authorization_code", "refresh_token"] }],
//   "users": [{ "accountId": "alice", "password": "pw", "email": "...", "email_verified": true,
//               "groups": ["a"], "preferred_username": "alice", "name": "Alice",
//               "padding": 0 }],              // padding: N bytes of 'x' in claim "padding"
//   "ttl": { "AccessToken": 3600, "IdToken": 3600, "RefreshToken": 86400,
//            "Session": 86400, "Grant": 86400, "AuthorizationCode": 60, "Interaction": 600 },
//   "idTokenPadding": 0,                       // default padding for users without one
//   "pkceRequired": true,                      // PKCE (S256) required for every client
//   "logoutAutoSubmit": true,                  // RP-initiated logout page submits itself
//   "clientAuthMethods": ["client_secret_basic", "client_secret_post"],
//   "strictClientAuth": true                   // reject basic<->post mix-ups (see below)
// }
//
// Test-only admin endpoints (loopback only, no auth):
//   GET  /__test/stats                 -> {"token_requests": n, "refresh_requests": n,
//                                          "client_secret_basic": n, "client_secret_post": n, ...}
//   POST /__test/reset-stats           -> zero the counters
//   POST /__test/fail-refresh[?count=N] -> the next N (default 1) refresh_token grants
//                                          answer invalid_grant (token not found)
//   POST /__test/revoke-refresh[?account=ID] -> delete stored refresh tokens (all, or one
//                                          account's); they then fail with invalid_grant
//   GET  /__test/health                -> {"ok": true}
//   POST /__test/sign {claims, header} -> {"token": JWT signed with the provider's key (logout tokens)}

import { createServer } from 'node:http';
import { createSign, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';

import Provider, { errors } from 'oidc-provider';

const configPath = process.argv[2] || process.env.IDP_CONFIG;
const config = configPath ? JSON.parse(readFileSync(configPath, 'utf8')) : {};

const requestedPort = Number(config.port ?? process.env.PORT ?? 0);

// ---------------------------------------------------------------------------
// users
// ---------------------------------------------------------------------------

const clientAuthMethodOf = new Map(); // client_id -> token_endpoint_auth_method
const users = new Map();
for (const u of config.users ?? [{
  accountId: 'alice',
  password: 'alice-password',
  email: 'alice@example.test',
  email_verified: true,
  groups: ['users'],
  preferred_username: 'alice',
  name: 'Alice Example',
}]) {
  if (!u.accountId) throw new Error('every user needs an accountId');
  users.set(String(u.accountId), u);
}

function userByLogin(login) {
  if (users.has(login)) return users.get(login);
  for (const u of users.values()) {
    if (u.email === login || u.preferred_username === login) return u;
  }
  return undefined;
}

function paddingFor(user) {
  const n = Number(user.padding ?? config.idTokenPadding ?? 0);
  return n > 0 ? 'x'.repeat(n) : undefined;
}

// ---------------------------------------------------------------------------
// in-memory adapter we can poke at from the admin endpoints
// ---------------------------------------------------------------------------

const store = new Map(); // "Model:id" -> { payload, expiresAt }
const grantIndex = new Map(); // grantId -> Set("Model:id")
const uidIndex = new Map(); // session uid -> session id
const userCodeIndex = new Map();

const admin = {
  failRefresh: 0,
  stats: {
    token_requests: 0,
    refresh_requests: 0,
    authorization_code_requests: 0,
    failed_token_requests: 0,
    forced_refresh_failures: 0,
    authorization_requests: 0,
    userinfo_requests: 0,
    revocation_requests: 0,
    end_session_requests: 0,
    logins: 0,
    failed_logins: 0,
    // how clients authenticated at /token, /token/revocation, /token/introspection
    client_secret_basic: 0,
    client_secret_post: 0,
    client_auth_rejected: 0,
  },
};

function live(key) {
  const entry = store.get(key);
  if (!entry) return undefined;
  if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry.payload;
}

class TestAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    store.set(key, {
      payload,
      expiresAt: typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined,
    });
    if (payload.grantId) {
      if (!grantIndex.has(payload.grantId)) grantIndex.set(payload.grantId, new Set());
      grantIndex.get(payload.grantId).add(key);
    }
    if (this.model === 'Session' && payload.uid) uidIndex.set(payload.uid, id);
    if (payload.userCode) userCodeIndex.set(payload.userCode, id);
  }

  async find(id) {
    if (this.model === 'RefreshToken' && admin.failRefresh > 0
        && Provider.ctx?.oidc?.route === 'token') {
      admin.failRefresh -= 1;
      admin.stats.forced_refresh_failures += 1;
      return undefined; // -> invalid_grant
    }
    return live(this.key(id));
  }

  async findByUid(uid) {
    const id = uidIndex.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = userCodeIndex.get(userCode);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const payload = live(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grantIndex.get(grantId) ?? []) store.delete(key);
    grantIndex.delete(grantId);
  }
}

function revokeRefreshTokens(accountId) {
  let n = 0;
  for (const [key, entry] of store) {
    if (!key.startsWith('RefreshToken:')) continue;
    if (accountId && entry.payload.accountId !== accountId) continue;
    store.delete(key);
    n += 1;
  }
  return n;
}

// ---------------------------------------------------------------------------
// tiny self-contained pages (no external assets)
// ---------------------------------------------------------------------------

function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

const STYLE = 'body{font-family:sans-serif;max-width:22em;margin:2em auto}'
  + 'label,input,button{display:block;margin:.3em 0}.error{color:#b00}';

function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${esc(title)}</title>`
    + `<style>${STYLE}</style></head><body>${body}</body></html>`;
}

function loginPage(uid, clientId, { error, login } = {}) {
  return page('Sign in', `<h1>Sign in</h1>
<p>Test identity provider, client <code>${esc(clientId)}</code></p>
${error ? `<p class="error" role="alert">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<label for="login">Username</label>
<input id="login" name="login" type="text" value="${esc(login)}" required autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" required>
<button type="submit">Sign in</button>
</form>`);
}

function send(res, status, body, type = 'text/html; charset=utf-8') {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}

function sendJson(res, status, obj) {
  send(res, status, JSON.stringify(obj), 'application/json');
}

async function readForm(req) {
  return new URLSearchParams((await readRaw(req)).toString('utf8'));
}

async function readRaw(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req.iterator({ destroyOnReturn: false })) {
    size += chunk.length;
    if (size > 1 << 20) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

// ---------------------------------------------------------------------------
// provider configuration
// ---------------------------------------------------------------------------

function buildConfiguration() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  signingKey = privateKey;
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', use: 'sig', alg: 'RS256' };

  const ttl = {
    AccessToken: 3600,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 14 * 24 * 3600,
    Session: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
    Interaction: 3600,
    ...(config.ttl ?? {}),
  };

  const clients = (config.clients ?? [{
    client_id: 'gateway',
    client_secret: 'gateway-secret',
    redirect_uris: ['http://127.0.0.1/callback'],
  }]).map((c) => ({
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    post_logout_redirect_uris: [],
    ...c,
  }));

  for (const c of clients) clientAuthMethodOf.set(c.client_id, c.token_endpoint_auth_method);

  const logoutAutoSubmit = config.logoutAutoSubmit ?? true;

  return {
    adapter: TestAdapter,
    clients,
    jwks: { keys: [jwk] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    responseTypes: ['code'],
    clientAuthMethods: config.clientAuthMethods ?? ['client_secret_basic', 'client_secret_post'],
    // Back-channel logout requests go to the gateway on 127.0.0.1, which the provider's SSRF protection
    // (special-use addresses refused) would stop: this test provider talks to loopback only.
    fetch(url, options) {
      const { dispatcher, ...rest } = options;
      return globalThis.fetch(url, rest);
    },
    pkce: { required: () => config.pkceRequired ?? true },
    ttl,
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    claims: {
      openid: ['sub', 'padding'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
      groups: ['groups'],
    },
    // put every claim of the granted scopes into the ID token too, not only userinfo
    conformIdTokenClaims: false,
    // refresh tokens for every client allowed the refresh_token grant, no offline_access needed
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      introspection: { enabled: true },
      backchannelLogout: { enabled: config.backchannelLogout ?? false },
      userinfo: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        async logoutSource(ctx, form) {
          ctx.type = 'html';
          ctx.body = page('Sign out', `<h1>Sign out</h1>${form}
<button id="logout-yes" type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>
${logoutAutoSubmit ? '<script>document.getElementById("logout-yes").click()</script>' : ''}`);
        },
        async postLogoutSuccessSource(ctx) {
          ctx.type = 'html';
          ctx.body = page('Signed out', '<h1>Signed out</h1><p>You have been signed out.</p>');
        },
      },
    },
    interactions: {
      url: (ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    async renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', `<h1>Error</h1>${Object.entries(out)
        .map(([k, v]) => `<p><b>${esc(k)}</b>: <span class="${esc(k)}">${esc(v)}</span></p>`).join('')}`);
    },
    async findAccount(ctx, sub) {
      const user = users.get(sub);
      if (!user) return undefined;
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            email: user.email,
            email_verified: user.email_verified ?? (user.email ? true : undefined),
            name: user.name,
            preferred_username: user.preferred_username ?? sub,
            groups: user.groups ?? [],
            padding: paddingFor(user),
          };
        },
      };
    },
  };
}

// ---------------------------------------------------------------------------
// interactions (login page, automatic consent)
// ---------------------------------------------------------------------------

async function autoConsent(provider, req, res, details) {
  const { prompt, params, session } = details;
  const { grantId } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });

  const d = prompt.details ?? {};
  if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
  if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(d.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const savedId = await grant.save();
  const consent = grantId ? {} : { grantId: savedId };
  await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
}

async function handleInteraction(provider, req, res, url) {
  const m = url.pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (!m) return false;
  const [, uid, isLogin] = m;
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    send(res, 400, page('Error', `<h1>Error</h1><p class="error">${esc(err.message)}</p>`));
    return true;
  }
  if (details.uid !== uid) {
    send(res, 400, page('Error', '<h1>Error</h1><p class="error">interaction mismatch</p>'));
    return true;
  }

  if (!isLogin && req.method === 'GET') {
    if (details.prompt.name === 'login') {
      send(res, 200, loginPage(uid, details.params.client_id));
    } else if (details.prompt.name === 'consent') {
      await autoConsent(provider, req, res, details);
    } else {
      await provider.interactionFinished(req, res, {
        error: 'access_denied', error_description: `unsupported prompt ${details.prompt.name}`,
      }, { mergeWithLastSubmission: false });
    }
    return true;
  }

  if (isLogin && req.method === 'POST') {
    const form = await readForm(req);
    const login = form.get('login') ?? '';
    const user = userByLogin(login);
    if (!user || String(user.password ?? '') !== (form.get('password') ?? '')) {
      admin.stats.failed_logins += 1;
      send(res, 200, loginPage(uid, details.params.client_id, {
        error: 'Invalid username or password.', login,
      }));
      return true;
    }
    admin.stats.logins += 1;
    await provider.interactionFinished(req, res, {
      login: { accountId: String(user.accountId) },
    }, { mergeWithLastSubmission: false });
    return true;
  }

  send(res, 405, page('Error', '<h1>Method not allowed</h1>'));
  return true;
}

// ---------------------------------------------------------------------------
// client authentication method bookkeeping / enforcement
// ---------------------------------------------------------------------------
//
// oidc-provider treats client_secret_basic and client_secret_post as
// interchangeable for any client registered with either. With
// "strictClientAuth" (default true) we reject a client that uses the method it
// is NOT registered with, like stricter providers do, so tests can tell.

const CLIENT_AUTH_PATHS = new Set(['/token', '/token/revocation', '/token/introspection']);

function formDecode(s) {
  return decodeURIComponent(s.replace(/\+/g, ' '));
}

// returns true when it answered the request itself
async function checkClientAuth(req, res, url) {
  if (req.method !== 'POST' || !CLIENT_AUTH_PATHS.has(url.pathname)) return false;
  let used;
  let clientId;
  const auth = req.headers.authorization;
  if (auth && /^basic\s/i.test(auth)) {
    used = 'client_secret_basic';
    try {
      const basic = Buffer.from(auth.slice(6).trim(), 'base64').toString('utf8');
      clientId = formDecode(basic.slice(0, Math.max(basic.indexOf(':'), 0)));
    } catch {
      return false; // malformed: let oidc-provider produce its own error
    }
  } else if (/^application\/x-www-form-urlencoded/i.test(req.headers['content-type'] ?? '')) {
    // read the body ourselves; oidc-provider then uses req.body (it warns once)
    const raw = (await readRaw(req)).toString('utf8');
    req.body = raw;
    const form = new URLSearchParams(raw);
    clientId = form.get('client_id') ?? undefined;
    used = form.get('client_secret') ? 'client_secret_post' : undefined;
  }
  if (!used) return false;
  admin.stats[used] += 1;
  const registered = clientAuthMethodOf.get(clientId);
  if ((config.strictClientAuth ?? true) && registered && registered !== used) {
    admin.stats.client_auth_rejected += 1;
    res.statusCode = 401;
    res.setHeader('Content-Type', 'application/json; charset=utf-8');
    res.setHeader('Cache-Control', 'no-store');
    res.setHeader('WWW-Authenticate', `Basic realm="${url.origin}"`);
    res.end(JSON.stringify({
      error: 'invalid_client',
      error_description: `client is registered for ${registered}, not ${used}`,
    }));
    return true;
  }
  return false;
}

// ---------------------------------------------------------------------------
// admin endpoints
// ---------------------------------------------------------------------------

// The provider's own signing key, for POST /__test/sign (tests craft logout tokens, valid and not).
let signingKey = null;

function b64url(data) {
  return Buffer.from(data).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
}

async function signForTest(req, res) {
  const { claims, header } = JSON.parse((await readRaw(req)).toString('utf8'));
  const head = { alg: 'RS256', typ: 'logout+jwt', kid: 'test-rs256', ...(header || {}) };
  const input = `${b64url(JSON.stringify(head))}.${b64url(JSON.stringify(claims))}`;
  const signature = createSign('RSA-SHA256').update(input).sign(signingKey);
  sendJson(res, 200, { token: `${input}.${b64url(signature)}` });
}

function handleAdmin(req, res, url) {
  if (!url.pathname.startsWith('/__test/')) return false;
  const route = `${req.method} ${url.pathname}`;
  switch (route) {
    case 'GET /__test/health':
      sendJson(res, 200, { ok: true });
      break;
    case 'POST /__test/sign':
      signForTest(req, res).catch((err) => sendJson(res, 400, { error: String(err) }));
      break;
    case 'GET /__test/stats':
      sendJson(res, 200, { ...admin.stats, pending_refresh_failures: admin.failRefresh });
      break;
    case 'POST /__test/reset-stats':
      for (const k of Object.keys(admin.stats)) admin.stats[k] = 0;
      sendJson(res, 200, { ok: true });
      break;
    case 'POST /__test/fail-refresh': {
      const count = Number(url.searchParams.get('count') ?? 1);
      admin.failRefresh = Number.isFinite(count) && count >= 0 ? count : 1;
      sendJson(res, 200, { ok: true, pending_refresh_failures: admin.failRefresh });
      break;
    }
    case 'POST /__test/revoke-refresh': {
      const revoked = revokeRefreshTokens(url.searchParams.get('account') || undefined);
      sendJson(res, 200, { ok: true, revoked });
      break;
    }
    default:
      sendJson(res, 404, { error: 'not_found', route });
  }
  return true;
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

const server = createServer();

server.listen(requestedPort, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://localhost:${port}`;
  const provider = new Provider(issuer, buildConfiguration());

  provider.on('backchannel.error', (ctx, err, client) => {
    console.error(`backchannel logout to ${client.clientId} failed: ${err} (${err.cause})`);
  });
  provider.on('backchannel.success', (ctx, client) => {
    admin.stats.backchannel_logouts = (admin.stats.backchannel_logouts || 0) + 1;
  });

  // request counters (counted once the provider is done with the request)
  provider.use(async (ctx, next) => {
    await next();
    const route = ctx.oidc?.route;
    const { stats } = admin;
    if (route === 'token') {
      stats.token_requests += 1;
      const gty = ctx.oidc?.params?.grant_type;
      if (gty === 'refresh_token') stats.refresh_requests += 1;
      if (gty === 'authorization_code') stats.authorization_code_requests += 1;
      if (ctx.status >= 400) stats.failed_token_requests += 1;
    } else if (route === 'authorization') {
      stats.authorization_requests += 1;
    } else if (route === 'userinfo') {
      stats.userinfo_requests += 1;
    } else if (route === 'revocation') {
      stats.revocation_requests += 1;
    } else if (route === 'end_session') {
      stats.end_session_requests += 1;
    }
  });

  provider.on('server_error', (ctx, err) => {
    process.stderr.write(`server_error: ${err?.stack ?? err}\n`);
  });

  const callback = provider.callback();
  const expectedHost = `localhost:${port}`;
  const BROWSER_PATHS = /^\/(auth|session\/end|interaction)(\/|$)/;

  server.on('request', async (req, res) => {
    try {
      const url = new URL(req.url, issuer);
      if (handleAdmin(req, res, url)) return;
      // Everything the provider generates (discovery endpoints, redirects) is
      // derived from the Host header; pin it to the issuer's so that requests
      // made to 127.0.0.1:PORT still see http://localhost:PORT URLs. Browser
      // pages reached via 127.0.0.1 are redirected to localhost first, or
      // their cookies would not be sent on later localhost requests.
      if (req.headers.host !== expectedHost) {
        if ((req.method === 'GET' || req.method === 'HEAD') && BROWSER_PATHS.test(url.pathname)) {
          res.statusCode = 303;
          res.setHeader('Location', `${issuer}${req.url}`);
          res.end();
          return;
        }
        req.headers.host = expectedHost;
      }
      if (await handleInteraction(provider, req, res, url)) return;
      if (await checkClientAuth(req, res, url)) return;
      callback(req, res);
    } catch (err) {
      process.stderr.write(`request error: ${err?.stack ?? err}\n`);
      if (!res.headersSent) {
        send(res, err instanceof errors.OIDCProviderError ? (err.status ?? 400) : 500,
          page('Error', `<h1>Error</h1><p class="error">${esc(err.message)}</p>`));
      } else {
        res.end();
      }
    }
  });

  process.stdout.write(`READY ${issuer}\n`);
});

server.on('error', (err) => {
  process.stderr.write(`listen error: ${err?.stack ?? err}\n`);
  process.exit(1);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
