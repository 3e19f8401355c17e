// The shopper's own sessions in a real browser: carol signs in on two browsers, signs the
// other one out from the first, whose next page goes through /login. Then a small order is
// placed at once, and a large one only after the provider's login page asks for her password
// again (max_age). Env: SHOP_URL, ISSUER, SCREENSHOT_DIR, STEP_UP_MAX_AGE_SECS.
import { check, launch, logInAtProvider, required, screenshots } from './lib.mjs';

const shop = required('SHOP_URL');
const issuer = required('ISSUER');
const shot = screenshots(required('SCREENSHOT_DIR'));
const maxAge = Number(required('STEP_UP_MAX_AGE_SECS'));

/** Whether the navigation that ended on `response` passed through the shop's /login. */
function wentThroughLogin(response) {
  for (let request = response.request(); request; request = request.redirectedFrom()) {
    if (request.url().startsWith(`${shop}/login`)) return true;
  }
  return false;
}

async function logIn(page) {
  await page.goto(`${shop}/login?return_to=/account/sessions`);
  await logInAtProvider(page, issuer, 'carol', shot);
  await page.waitForURL(`${shop}/account/sessions`, { timeout: 10000 });
}

const browser = await launch();
try {
  const laptop = await (await browser.newContext({ viewport: { width: 1100, height: 800 } })).newPage();
  const phone = await (await browser.newContext({ viewport: { width: 375, height: 740 } })).newPage();
  await logIn(laptop);
  await logIn(phone);

  await laptop.reload();
  await shot(laptop, 'two-sessions');
  check((await laptop.locator('#my-sessions tbody tr').count()) === 2, 'both sessions listed');
  check((await laptop.locator('tr.this-device').count()) === 1, 'this device marked');
  await Promise.all([
    laptop.waitForURL(`${shop}/account/sessions`),
    laptop.locator('tr:not(.this-device)').getByRole('button', { name: /^Sign out/ }).click(),
  ]);
  await shot(laptop, 'other-signed-out');
  check((await laptop.locator('#flash-notice').innerText()).includes('signed out'), 'told so');
  check((await laptop.locator('#my-sessions tbody tr').count()) === 1, 'one session left');

  const next = await phone.goto(`${shop}/orders`);
  await shot(phone, 'phone-next-page');
  check(wentThroughLogin(next), 'the signed-out browser goes through /login');

  // A small order: placed at once.
  await laptop.goto(`${shop}/products/notebook-a5`);
  await Promise.all([laptop.waitForURL(`${shop}/cart`), laptop.getByRole('button', { name: /Add/ }).click()]);
  await Promise.all([
    laptop.waitForURL(/\/orders\/[0-9a-f-]{36}$/),
    laptop.getByRole('button', { name: 'Place order' }).click(),
  ]);
  await shot(laptop, 'small-order-placed');

  // A large order, once the sign-in is older than the step-up's max age.
  await laptop.goto(`${shop}/products/desk-lamp`);
  await Promise.all([laptop.waitForURL(`${shop}/cart`), laptop.getByRole('button', { name: /Add/ }).click()]);
  await laptop.waitForTimeout((maxAge + 2) * 1000);
  await laptop.getByRole('button', { name: 'Place order' }).click();
  await laptop.waitForURL((url) => url.href.startsWith(issuer), { timeout: 10000 });
  await shot(laptop, 'provider-asks-again');
  await logInAtProvider(laptop, issuer, 'carol', shot);
  await laptop.waitForURL(`${shop}/cart`, { timeout: 10000 });
  await shot(laptop, 'back-at-cart-confirmed');
  check((await laptop.locator('#flash-notice').innerText()).includes('recent sign-in'), 'says why');
  await Promise.all([
    laptop.waitForURL(/\/orders\/[0-9a-f-]{36}$/),
    laptop.getByRole('button', { name: 'Place order' }).click(),
  ]);
  await shot(laptop, 'large-order-placed');
  console.log('account journey: ok');
} finally {
  await browser.close();
}
