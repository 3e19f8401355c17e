// An admin ends a shopper's session from the dashboard, in a real browser: alice (an admin)
// and bob each log in on the provider's page in their own browser; alice finds bob's session,
// revokes it after confirming, and bob's next request is sent to login.
// Env: SHOP_URL, ISSUER, SCREENSHOT_DIR.
import { check, launch, logInAtProvider, required, screenshots } from './lib.mjs';

const shop = required('SHOP_URL');
const issuer = required('ISSUER');
const shot = screenshots(required('SCREENSHOT_DIR'));

const browser = await launch();
try {
  const alice = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  const bob = await (await browser.newContext({ viewport: { width: 1000, height: 700 } })).newPage();

  await bob.goto(`${shop}/login?return_to=/orders`);
  await logInAtProvider(bob, issuer, 'bob', shot);
  await bob.waitForURL(`${shop}/orders`);
  await shot(bob, 'bob-orders');

  await alice.goto(`${shop}/login?return_to=/admin`);
  await logInAtProvider(alice, issuer, 'alice', shot);
  await alice.waitForURL(`${shop}/admin`);
  await shot(alice, 'admin-dashboard');
  check((await alice.locator('#stat-active-sessions').innerText()).trim() === '2', 'two active sessions');
  check(await alice.locator('#activity-chart rect.logins').count() === 24, 'a 24-hour chart');

  await alice.getByRole('link', { name: 'Sessions', exact: true }).click();
  await alice.waitForURL(`${shop}/admin/sessions`);
  await alice.getByLabel('User or email').fill('bob');
  await Promise.all([alice.waitForURL(/\/admin\/sessions\?q=bob/), alice.getByRole('button', { name: 'Apply' }).click()]);
  await shot(alice, 'admin-sessions-search');
  const rows = alice.locator('tr[data-session]');
  check(await rows.count() === 1, 'the search finds bob\'s one session');
  check((await rows.first().getAttribute('data-subject')) === 'bob', 'the row is bob\'s');

  await Promise.all([alice.waitForURL(/\/revoke$/), rows.first().getByRole('button', { name: /Revoke/ }).click()]);
  await shot(alice, 'admin-confirm-revoke');
  await Promise.all([
    alice.waitForURL(/\/admin\/sessions\?revoked=1$/),
    alice.getByRole('button', { name: 'Yes, revoke' }).click(),
  ]);
  await shot(alice, 'admin-revoked');
  check(await alice.locator('#admin-notice').isVisible(), 'the revocation is confirmed');

  // Bob's very next request: his session is gone, the shop sends him to log in.
  const next = await bob.request.get(`${shop}/orders`, { maxRedirects: 0 });
  check(next.status() === 303, `bob's next request is redirected (got ${next.status()})`);
  check(next.headers().location === '/login?return_to=%2Forders', `to login: ${next.headers().location}`);
  await bob.goto(`${shop}/`);
  await shot(bob, 'bob-logged-out');
  check(await bob.locator('#login-link').isVisible(), 'bob sees "Log in" again');

  await alice.getByRole('link', { name: 'Audit log' }).click();
  await alice.waitForURL(`${shop}/admin/audit`);
  await shot(alice, 'admin-audit');
  check(await alice.locator('tr[data-action=revoke_session]').count() === 1, 'the revocation is audited');
  console.log('admin journey: ok');
} finally {
  await browser.close();
}
