// A shopper's journey in a real browser: browse, add two products anonymously, check out,
// log in on the provider's page, come back to the intact cart, place the order, see it in
// /orders. Env: SHOP_URL, ISSUER, SCREENSHOT_DIR, SHOPPER (default bob).
import { check, launch, logInAtProvider, required, screenshots } from './lib.mjs';

const shop = required('SHOP_URL');
const issuer = required('ISSUER');
const shot = screenshots(required('SCREENSHOT_DIR'));
const shopper = process.env.SHOPPER || 'bob';

const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
  await page.goto(`${shop}/`);
  await shot(page, 'home');
  check((await page.locator('.product-card').count()) >= 2, 'the home page lists products');

  // The first product from its card on the home page.
  await Promise.all([
    page.waitForURL(`${shop}/cart`),
    page.getByRole('button', { name: 'Add Ceramic Mug to cart' }).click(),
  ]);
  await shot(page, 'cart-one-item');

  // The second from its product page, with a quantity of 2, using the keyboard.
  await page.goto(`${shop}/`);
  await page.getByRole('link', { name: /A5 Dot-Grid Notebook/ }).click();
  await page.waitForURL(`${shop}/products/notebook-a5`);
  await page.getByLabel('Quantity').fill('2');
  await shot(page, 'product-page');
  await Promise.all([page.waitForURL(`${shop}/cart`), page.getByLabel('Quantity').press('Enter')]);
  await shot(page, 'cart-two-items');
  check((await page.locator('#cart-count').innerText()).trim() === '3', 'cart count is 3');

  // Checkout while anonymous: through the provider's login page and back to the cart.
  await page.getByRole('button', { name: 'Log in and check out' }).click();
  await logInAtProvider(page, issuer, shopper, shot);
  await page.waitForURL(`${shop}/cart`, { timeout: 10000 });
  await shot(page, 'back-at-cart');
  const rows = await page.locator('tr[data-product]').evaluateAll((trs) =>
    trs.map((tr) => [tr.dataset.product, tr.querySelector('input[name=quantity]').value]));
  check(JSON.stringify(rows) === JSON.stringify([['ceramic-mug', '1'], ['notebook-a5', '2']]),
    `the cart survived the login: ${JSON.stringify(rows)}`);

  await Promise.all([
    page.waitForURL(/\/orders\/[0-9a-f-]{36}$/),
    page.getByRole('button', { name: 'Place order' }).click(),
  ]);
  await shot(page, 'order-confirmation');
  check(await page.locator('#order-confirmation').isVisible(), 'a confirmation is shown');

  await page.goto(`${shop}/orders`);
  await shot(page, 'orders');
  const orders = await page.locator('section.order').allInnerTexts();
  check(orders.length === 1, `one order listed, got ${orders.length}`);
  check(orders[0].includes('1 × Ceramic Mug') && orders[0].includes('2 × A5 Dot-Grid Notebook'),
    `the order lists both products: ${orders[0]}`);

  // Phone width: the same page still works.
  await page.setViewportSize({ width: 375, height: 740 });
  await page.goto(`${shop}/cart`);
  await shot(page, 'phone-empty-cart');
  console.log('shop journey: ok');
} finally {
  await browser.close();
}
