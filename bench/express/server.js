// The tutorial stack this shop is measured against: Express, express-session in Redis
// (connect-redis), the Authorization Code flow with PKCE through openid-client, and a `/me`
// route that checks the session's token expiry and answers the session's user as JSON.
// Env: PORT, ISSUER, CLIENT_ID, CLIENT_SECRET, REDIS_URL, SESSION_SECRET.
const express = require('express');
const session = require('express-session');
const RedisStore = require('connect-redis').default;
const { createClient } = require('redis');
const { Issuer, generators } = require('openid-client');

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} must be set`);
  return value;
};

async function main() {
  const port = Number(env('PORT'));
  const base = `http://127.0.0.1:${port}`;
  const redis = createClient({ url: env('REDIS_URL') });
  await redis.connect();
  const issuer = await Issuer.discover(env('ISSUER'));
  const client = new issuer.Client({
    client_id: env('CLIENT_ID'),
    client_secret: env('CLIENT_SECRET'),
    redirect_uris: [`${base}/callback`],
    response_types: ['code'],
  });

  const app = express();
  app.use(session({
    store: new RedisStore({ client: redis, prefix: 'sess:' }),
    secret: env('SESSION_SECRET'),
    name: 'express_session',
    resave: false,
    saveUninitialized: false,
    cookie: { httpOnly: true, sameSite: 'lax', maxAge: 24 * 3600 * 1000 },
  }));

  app.get('/login', (req, res) => {
    const codeVerifier = generators.codeVerifier();
    const state = generators.state();
    const nonce = generators.nonce();
    req.session.login = { codeVerifier, state, nonce };
    res.redirect(client.authorizationUrl({
      scope: 'openid email profile',
      code_challenge: generators.codeChallenge(codeVerifier),
      code_challenge_method: 'S256',
      state,
      nonce,
    }));
  });

  app.get('/callback', async (req, res, next) => {
    try {
      const login = req.session.login;
      if (!login) return res.status(403).send('no login in progress');
      const tokens = await client.callback(`${base}/callback`, client.callbackParams(req), {
        code_verifier: login.codeVerifier,
        state: login.state,
        nonce: login.nonce,
      });
      const claims = tokens.claims();
      req.session.regenerate((err) => {
        if (err) return next(err);
        req.session.user = { sub: claims.sub, email: claims.email, name: claims.name };
        req.session.tokens = {
          access_token: tokens.access_token,
          refresh_token: tokens.refresh_token,
          expires_at: tokens.expires_at,
        };
        res.redirect('/me');
      });
    } catch (err) {
      next(err);
    }
  });

  app.get('/me', (req, res) => {
    const { user, tokens } = req.session;
    if (!user) return res.status(401).json({ error: 'login required' });
    if (!tokens || tokens.expires_at * 1000 <= Date.now()) {
      return res.status(401).json({ error: 'token expired' });
    }
    res.json({ user });
  });

  app.listen(port, '127.0.0.1', () => console.log(`express listening on ${port}`));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
