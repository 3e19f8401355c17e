// Shared by the browser journeys: launching Debian's Chromium, numbered screenshots, and
// logging in on the local provider's own page.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} must be set`);
  return value;
}

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
}

/** Saves `NN-name.png` under `dir`, numbering the steps in order. */
export function screenshots(dir) {
  mkdirSync(dir, { recursive: true });
  let step = 0;
  return async (page, name) => {
    step += 1;
    const file = join(dir, `${String(step).padStart(2, '0')}-${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    console.log(`screenshot ${file}`);
  };
}

/** On the provider's login page: fill in the form as a person would and submit it. */
export async function logInAtProvider(page, issuer, user, shot) {
  await page.waitForURL((url) => url.href.startsWith(issuer), { timeout: 10000 });
  await page.fill('input[name=login]', user);
  await page.fill('input[name=password]', `${user}-password`);
  await shot(page, 'provider-login');
  await Promise.all([page.waitForNavigation(), page.press('input[name=password]', 'Enter')]);
}

export function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}
