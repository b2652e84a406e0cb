// Drives headless Chromium (Debian's, through playwright-core) through single sign-on for
// tests/e2e/sso.rs, and prints what it saw as one JSON object. The test decides what is right.
//
//   node tests/sso/drive.mjs SCENARIO.json
//
// SCENARIO: { chromium, args: [Chromium flags], idp: "http://idp.test:N", user, password,
//   a1, a2, other, shared: URLs of sandboxes (the user's team's two, another team's, a share
//   link), sign_out: a URL of the sign-out path, hostile: a page of a2 that fetches a1 }
import { readFileSync } from 'node:fs';

import { chromium } from 'playwright-core';

const scenario = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const STEP_TIMEOUT = 15000;
const out = {};

/// Opens `url` in `page`; what the page ended on, and which identity-provider pages it passed.
async function open(page, url) {
  const idpRequests = [];
  const listener = (request) => {
    if (request.url().startsWith(scenario.idp) && request.isNavigationRequest()) {
      idpRequests.push(new URL(request.url()).pathname);
    }
  };
  page.on('request', listener);
  let status = null;
  try {
    const response = await page.goto(url, { timeout: STEP_TIMEOUT, waitUntil: 'load' });
    status = response ? response.status() : null;
  } catch (e) {
    status = `error: ${e.message.split('\n')[0]}`;
  }
  page.off('request', listener);
  return {
    status,
    url: page.url(),
    title: await page.title().catch(() => ''),
    text: (await page.content().catch(() => '')).slice(0, 2000),
    idp: idpRequests,
    login_form: (await page.locator('input[name="login"]').count().catch(() => 0)) > 0,
  };
}

/// Signs in on the provider's pages: its login form, then (asked for with prompt=consent, which
/// refresh tokens need at oidc-provider) its consent page, until the browser leaves it.
async function signIn(page) {
  for (let step = 0; step < 4 && page.url().startsWith(scenario.idp); step += 1) {
    if (await page.locator('input[name="login"]').count()) {
      await page.fill('input[name="login"]', scenario.user);
      await page.fill('input[name="password"]', scenario.password);
    }
    await Promise.all([
      page.waitForNavigation({ timeout: STEP_TIMEOUT }),
      page.click('button[type="submit"]'),
    ]);
  }
  await page.waitForURL((u) => !u.toString().startsWith(scenario.idp), { timeout: STEP_TIMEOUT });
  await page.waitForLoadState('load', { timeout: STEP_TIMEOUT });
  return {
    url: page.url(),
    title: await page.title(),
    text: (await page.content()).slice(0, 2000),
  };
}

const browser = await chromium.launch({
  executablePath: scenario.chromium,
  args: scenario.args,
  timeout: STEP_TIMEOUT,
});
try {
  const context = await browser.newContext();
  const page = await context.newPage();

  if (scenario.refresh_stats) {
    // Only this: sign in, then reload the sandbox until the session ran out and the filter
    // renewed it with the refresh token (the provider counts refresh grants), bounded.
    out.first = await open(page, scenario.a1);
    out.first.signed_in = out.first.login_form ? await signIn(page) : null;
    const deadline = Date.now() + 30000;
    out.reloads = [];
    for (;;) {
      const stats = await (await fetch(scenario.refresh_stats)).json();
      if (stats.refresh_token > 0) {
        out.renewed = await open(page, scenario.a1);
        break;
      }
      if (Date.now() > deadline) break;
      const seen = await open(page, scenario.a1);
      out.reloads.push({ status: seen.status, title: seen.title, idp: seen.idp });
      await page.waitForTimeout(250);
    }
    process.stdout.write(`${JSON.stringify(out)}\n`);
    await browser.close();
    process.exit(0);
  }

  // 1. A sandbox of the user's team: to the provider's login form, then back to the app.
  out.first = await open(page, scenario.a1);
  out.first.signed_in = out.first.login_form ? await signIn(page) : null;
  out.cookies = (await context.cookies()).map((c) => ({
    name: c.name, domain: c.domain, secure: c.secure, httpOnly: c.httpOnly, sameSite: c.sameSite,
  }));

  // 2. The team's second sandbox: no provider, no login.
  out.second = await open(page, scenario.a2);

  // 2b. A share link opened while signed in: the filter passes it by (its cookies, still
  //     encrypted, go along to daytona-authz), the link's cookie opens the app.
  out.shared_signed_in = await open(page, scenario.shared);

  // 3. Another team's sandbox: the 403 page.
  out.other = await open(page, scenario.other);

  // 4. A page of the second sandbox reading the first with the session: refused; its own
  //    sandbox: read.
  out.hostile = await open(page, scenario.hostile);
  await page.waitForFunction(
    () => document.getElementById('out')?.textContent !== 'pending',
    null,
    { timeout: STEP_TIMEOUT },
  ).catch(() => {});
  out.hostile_results = await page.locator('#out').textContent().catch(() => null);

  // 5. A share link beside single sign-on, in a browser without a session: the app, and the
  //    provider never asked.
  const stranger = await browser.newContext();
  const strangerPage = await stranger.newPage();
  out.shared = await open(strangerPage, scenario.shared);
  // 5b. On that page (a share link's, no session), the app's own script fetches its sandbox
  //     without credentials: 401 from the edge, not a redirect to the provider.
  out.fetch_without_session = await strangerPage.evaluate(async () => {
    const r = await fetch('/data', { credentials: 'omit' });
    return { status: r.status, redirected: r.redirected, url: r.url };
  }).catch((e) => ({ error: String(e) }));
  await stranger.close();

  // 6. Sign-out: the provider's session ends too, so the team's sandboxes ask for a login again.
  out.sign_out = await open(page, scenario.sign_out);
  out.cookies_after_sign_out = (await context.cookies()).map((c) => c.name);
  out.after_sign_out = await open(page, scenario.a2);
} finally {
  await browser.close();
}
process.stdout.write(`${JSON.stringify(out)}\n`);
