// A real, certified OpenID provider for the single-sign-on end-to-end tests (tests/e2e/sso.rs):
// oidc-provider (npm), on 127.0.0.1, with test users and groups. Its own login form
// (devInteractions) signs in any user of the test's list; consent is given in advance for the
// test's client (a first-party application), so a person signs in and lands on the sandbox.
//
//   node tests/sso/idp.mjs        prints {"port": N} once it listens
//
// It starts unconfigured (every request 503) until the test POSTs /_test/configure with the
// client (its id, secret, redirect URI, post-logout URIs), the users and the token lifetimes:
// the redirect URI names Envoy's port, which is only known once Envoy runs, and Envoy needs
// this port first. GET /_test/stats says how many code and refresh-token grants it answered.
import http from 'node:http';

import Provider from 'oidc-provider';

const server = http.createServer();
let handler = null;
const stats = { authorization_code: 0, refresh_token: 0, end_session: 0, logins: 0 };

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

async function configure(port, settings) {
  const { client, users, ttl } = settings;
  const issuer = `http://${settings.host}:${port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: client.id,
      client_secret: client.secret,
      redirect_uris: [client.redirect_uri],
      post_logout_redirect_uris: client.post_logout_redirect_uris,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_post',
    }],
    async findAccount(ctx, id) {
      const user = users[id];
      if (!user) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: `${id}@example.com`,
            name: id,
            groups: user.groups,
            ...(user.sandbox_id ? { sandbox_id: user.sandbox_id } : {}),
          };
        },
      };
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups', 'sandboxes'],
    claims: {
      openid: ['sub'],
      email: ['email'],
      profile: ['name'],
      groups: ['groups'],
      sandboxes: ['sandbox_id'],
    },
    // The ID token carries the claims of the granted scopes (groups, sandbox_id): it is the
    // token daytona-authz verifies.
    conformIdTokenClaims: false,
    // A first-party client: consent is given in advance, so only the login form is shown.
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid offline_access email profile groups sandboxes');
      await grant.save();
      return grant;
    },
    async issueRefreshToken(ctx, client, code) {
      return client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access');
    },
    pkce: { required: () => true },
    ttl: {
      AccessToken: ttl.access_token,
      IdToken: ttl.id_token,
      RefreshToken: 3600,
      Session: 3600,
      Grant: 3600,
      Interaction: 600,
    },
    cookies: { keys: ['daytona-authz-sso-test-cookie-key'] },
    features: {
      devInteractions: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        // Confirmed at once (a person clicking "Yes, sign me out").
        async logoutSource(ctx, form) {
          ctx.body = `<!DOCTYPE html><html><head><title>Signing out</title></head><body>${form}
<script>const f = document.getElementById('op.logoutForm');
const yes = document.createElement('input'); yes.type = 'hidden'; yes.name = 'logout';
yes.value = 'yes'; f.appendChild(yes); f.submit();</script></body></html>`;
        },
      },
    },
  });
  provider.on('grant.success', (ctx) => {
    const type = ctx.oidc.params?.grant_type;
    if (type in stats) stats[type] += 1;
  });
  provider.on('end_session.success', () => { stats.end_session += 1; });
  provider.on('interaction.ended', () => { stats.logins += 1; });
  return provider.callback();
}

server.on('request', (req, res) => {
  if (req.url === '/_test/stats') return json(res, 200, stats);
  if (req.url === '/_test/configure' && req.method === 'POST') {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', async () => {
      try {
        handler = await configure(server.address().port, JSON.parse(body));
        json(res, 200, { ok: true });
      } catch (e) {
        json(res, 500, { error: String(e) });
      }
    });
    return undefined;
  }
  if (!handler) return json(res, 503, { error: 'not configured' });
  return handler(req, res);
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});
