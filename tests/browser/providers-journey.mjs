// Two providers in a real browser: "Log in" shows the chooser (no script), which keeps the
// page the shopper was on; bob signs in with the second provider (it takes only pushed
// authorization requests and private_key_jwt), alice with the first, and the dashboard names
// each session's provider. Env: SHOP_URL, STAFF_ISSUER, SHOPPERS_ISSUER, SCREENSHOT_DIR.
import { check, launch, logInAtProvider, required, screenshots } from './lib.mjs';

const shop = required('SHOP_URL');
const staffIssuer = required('STAFF_ISSUER');
const shoppersIssuer = required('SHOPPERS_ISSUER');
const shot = screenshots(required('SCREENSHOT_DIR'));

const browser = await launch();
try {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 }, javaScriptEnabled: false });
  const page = await context.newPage();
  await page.goto(`${shop}/products/desk-lamp`);
  await Promise.all([page.waitForURL(/\/login/), page.click('#login-link')]);
  await shot(page, 'chooser');
  const choices = await page.locator('#providers a').allInnerTexts();
  check(choices.length === 2, `two ways to sign in, got ${choices}`);
  check(choices[1].includes('Shopper ID'), 'named as configured');
  await page.getByRole('link', { name: 'Sign in with Shopper ID' }).click();
  await logInAtProvider(page, shoppersIssuer, 'bob', shot);
  await page.waitForURL(`${shop}/products/desk-lamp`, { timeout: 10000 });
  await shot(page, 'back-on-the-product');
  check((await page.locator('header').innerText()).includes('Bob'), 'signed in as bob');

  const staff = await (await browser.newContext({ viewport: { width: 1300, height: 800 } })).newPage();
  await staff.goto(`${shop}/login?return_to=/admin/sessions`);
  await staff.getByRole('link', { name: 'Sign in with Staff sign-in' }).click();
  await logInAtProvider(staff, staffIssuer, 'alice', shot);
  await staff.waitForURL(`${shop}/admin/sessions`, { timeout: 10000 });
  await shot(staff, 'dashboard-with-providers');
  const providers = await staff.locator('#sessions td.provider').allInnerTexts();
  check(providers.includes('Shopper ID') && providers.includes('Staff sign-in'), `providers shown: ${providers}`);
  console.log('providers journey: ok');
} finally {
  await browser.close();
}
