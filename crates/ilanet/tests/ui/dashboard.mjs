// Drives the dashboard in Debian's Chromium (playwright-core from ui/node_modules) and prints
// one JSON line per finding for crates/ilanet/tests/ui_browser.rs to assert on.
//
// Env: UI_DIR (ui/ of the repo), URL (with ?token=), MODE ("full" | "read-only"),
// SITES (JSON [{name, containers:[names]}]), SRC (container to open), DST_SIR, DST_ILA,
// ARTEFACTS (directory for screenshots), PROFILE (fresh user-data-dir).
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const env = (k) => {
  const v = process.env[k];
  if (v === undefined) throw new Error(`missing env ${k}`);
  return v;
};
const { chromium } = await import(pathToFileURL(join(env("UI_DIR"), "node_modules/playwright-core/index.mjs")));
const out = (o) => console.log(JSON.stringify(o));

const ctx = await chromium.launchPersistentContext(env("PROFILE"), {
  executablePath: "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 800 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const artefacts = env("ARTEFACTS");
const mode = env("MODE");
try {
  const page = ctx.pages()[0] || (await ctx.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  const resp = await page.goto(env("URL"));
  out({ check: "landing", status: resp.status(), url: page.url() });
  await page.waitForSelector("#conn.ok", { timeout: 15000 });
  // Every site on the map and in the list, every container listed.
  const sites = JSON.parse(env("SITES"));
  await page.waitForFunction((n) => document.querySelectorAll("#map .site").length === n, sites.length, { timeout: 15000 });
  const mapSites = await page.$$eval("#map .site", (gs) => gs.map((g) => g.dataset.site));
  const listed = await page.$$eval(".container", (bs) => bs.map((b) => b.dataset.container));
  const landPath = await page.$eval("#map path.land", (p) => p.getAttribute("d").length);
  out({ check: "map", sites: mapSites, containers: listed, land_path_chars: landPath });
  const cookies = await ctx.cookies();
  out({ check: "cookie", cookies: cookies.map((c) => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite })) });
  await page.screenshot({ path: join(artefacts, mode === "full" ? "map.png" : `${mode}.png`) });

  if (mode === "podman") {
    // A podman container: the shell runs in its file system and pid namespace.
    const src = env("SRC");
    await page.click(`.container[data-container="${src}"]`);
    const text = async () => page.evaluate(() => {
      const t = window.__ilanet.term?.term;
      if (!t) return "";
      const b = t.buffer.active;
      const lines = [];
      for (let i = 0; i < b.length; i++) lines.push(b.getLine(i)?.translateToString(true) ?? "");
      return lines.join("\n");
    });
    const waitFor = async (re, ms) => {
      const end = Date.now() + ms;
      while (Date.now() < end) { const t = await text(); if (re.test(t)) return true; await page.waitForTimeout(100); }
      return false;
    };
    const prompt = await waitFor(new RegExp(`\\[${src}\\]`), 10000);
    await page.keyboard.type("echo pid1=$(tr '\\0' ' ' < /proc/1/cmdline)\n");
    const pid1 = await waitFor(/^pid1=\/bin\/busybox sleep/m, 5000);
    await page.keyboard.type(`ping -6 -c 2 -i 0.3 ${env("DST_SIR")}\n`);
    const ping = await waitFor(/2 packets transmitted, 2 (packets )?received/, 15000);
    await page.screenshot({ path: join(artefacts, "podman-terminal.png") });
    out({ check: "podman", prompt, pid1_is_the_container_init: pid1, ping_answered: ping,
      tail: (await text()).split("\n").filter((l) => l.trim()).slice(-6) });
  } else if (mode === "idle") {
    const src = env("SRC");
    await page.click(`.container[data-container="${src}"]`);
    const end = Date.now() + 15000;
    let closed = false;
    while (Date.now() < end && !closed) {
      closed = await page.evaluate(() => {
        const t = window.__ilanet.term?.term;
        if (!t) return false;
        const b = t.buffer.active;
        for (let i = 0; i < b.length; i++) if ((b.getLine(i)?.translateToString(true) ?? "").includes("idle timeout")) return true;
        return false;
      });
      if (!closed) await page.waitForTimeout(200);
    }
    out({ check: "idle", closed });
  } else if (mode === "read-only") {
    const disabled = await page.$$eval(".container", (bs) => bs.every((b) => b.disabled));
    await page.click("#map .site");
    await page.waitForTimeout(500);
    const termVisible = await page.isVisible("#term");
    const offVisible = await page.isVisible("#term-off");
    out({ check: "read-only", buttons_disabled: disabled, terminal_visible: termVisible, notice_visible: offVisible });
  } else {
    // Choose a container with the keyboard (Tab focus + Enter): its terminal opens with a prompt.
    const src = env("SRC");
    await page.focus(`.container[data-container="${src}"]`);
    await page.keyboard.press("Enter");
    const termText = () => page.evaluate(() => {
      const t = window.__ilanet.term?.term;
      if (!t) return "";
      const b = t.buffer.active;
      const lines = [];
      for (let i = 0; i < b.length; i++) lines.push(b.getLine(i)?.translateToString(true) ?? "");
      return lines.join("\n");
    });
    const waitText = async (re, ms) => {
      const end = Date.now() + ms;
      while (Date.now() < end) {
        const t = await termText();
        if (re.test(t)) return t;
        await page.waitForTimeout(100);
      }
      return null;
    };
    const prompt = await waitText(new RegExp(`\\[${src}\\]`), 10000);
    out({ check: "terminal-open", prompt_seen: prompt !== null });

    // Keystroke-to-echo latency: real key events; time from the page's keydown to the echo
    // being parsed into the terminal (both on the page's clock).
    await page.evaluate(() => {
      window.__lat = { downs: [], echoes: [] };
      document.addEventListener("keydown", () => window.__lat.downs.push(performance.now()), true);
      window.__ilanet.term.term.onWriteParsed(() => window.__lat.echoes.push(performance.now()));
    });
    const lat = [];
    for (let i = 0; i < 100; i++) {
      const n = await page.evaluate(() => window.__lat.echoes.length);
      await page.keyboard.press("x");
      await page.waitForFunction((n) => window.__lat.echoes.length > n, n, { timeout: 5000 });
      const ms = await page.evaluate((i) => {
        const d = window.__lat.downs[i];
        const e = window.__lat.echoes.find((t) => t >= d);
        return e - d;
      }, i);
      lat.push(ms);
    }
    await page.keyboard.press("Control+u");
    const sorted = [...lat].sort((a, b) => a - b);
    const pct = (p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
    out({ check: "latency", n: lat.length, p50_ms: pct(50), p99_ms: pct(99), max_ms: sorted[sorted.length - 1] });

    // Resize: the shell learns the terminal's size.
    await page.keyboard.type("stty size\n");
    const size = await waitText(/^\d+ \d+$/m, 5000);
    const want = await page.evaluate(() => `${window.__ilanet.term.term.rows} ${window.__ilanet.term.term.cols}`);
    out({ check: "size", stty: size ? size.match(/^(\d+ \d+)$/m)[1] : null, xterm: want });

    // UTF-8 round trip through the shell.
    await page.keyboard.type("echo ünïcødé-✓\n");
    const utf = await waitText(/^ünïcødé-✓$/m, 5000);
    out({ check: "utf8", echoed: utf !== null });

    // Copy (Ctrl+Shift+C of the selection) and paste (Ctrl+Shift+V) through the clipboard.
    await ctx.grantPermissions(["clipboard-read", "clipboard-write"], { origin: new URL(env("URL")).origin });
    await page.evaluate(() => window.__ilanet.term.term.selectAll());
    await page.keyboard.press("Control+Shift+C");
    await page.waitForTimeout(200);
    const copied = await page.evaluate(() => navigator.clipboard.readText());
    await page.evaluate(() => navigator.clipboard.writeText("echo pasted-$((6*7))"));
    await page.keyboard.press("Control+Shift+V");
    // The paste lands asynchronously (clipboard read): Enter only once it is on the line.
    const onLine = await waitText(/# echo pasted-\$\(\(6\*7\)\)\s*$/m, 5000);
    await page.keyboard.press("Enter");
    const pasted = onLine !== null && (await waitText(/^pasted-42$/m, 5000)) !== null;
    out({ check: "clipboard", copied_has_utf8_line: copied.includes("ünïcødé-✓"), pasted, tail: (await termText()).split("\n").filter((l) => l.trim()).slice(-3) });
    await page.evaluate(() => window.__ilanet.term.term.clearSelection());

    // ping6 a container at another site.
    const dst = env("DST_SIR");
    await page.keyboard.type(`ping -6 -c 3 -i 0.3 ${dst}\n`);
    const ping = await waitText(/3 packets transmitted, 3 received/, 15000);
    out({ check: "ping", reply_seen: ping !== null, text_tail: (await termText()).split("\n").filter((l) => l.trim()).slice(-4) });
    await page.screenshot({ path: join(artefacts, "terminal.png") });

    // The steps of the flow: SIR → ILA at the sender, ILA → SIR at the receiver, delivered.
    const ila = env("DST_ILA");
    let steps = [];
    const end = Date.now() + 10000;
    while (Date.now() < end) {
      steps = await page.$$eval("#steps li.step", (ls) => ls.map((l) => ({ kind: l.dataset.kind, host: l.dataset.host,
        src: l.dataset.src, dst: l.dataset.dst, dst_after: l.dataset.dstAfter || null, csum: l.dataset.csum || null })));
      if (steps.some((s) => s.kind === "delivered")) break;
      await page.waitForTimeout(200);
    }
    out({ check: "steps", steps, expected: { dst_sir: dst, dst_ila: ila } });
    await page.locator("#steps-panel").screenshot({ path: join(artefacts, "steps.png") });

    // A container of another tenant: no reply, and the steps say where and why it was dropped.
    const other = env("DROP_SIR");
    await page.keyboard.type(`ping -6 -c 2 -i 0.3 -W 1 ${other}\n`);
    const lost = await waitText(/2 packets transmitted, 0 received/, 15000);
    let dropSteps = [];
    const end2 = Date.now() + 10000;
    while (Date.now() < end2) {
      dropSteps = await page.$$eval("#steps li.step", (ls) => ls.map((l) => ({ kind: l.dataset.kind, host: l.dataset.host,
        src: l.dataset.src, dst: l.dataset.dst, note: l.textContent })));
      if (dropSteps.some((s) => s.kind === "dropped" && s.dst === other)) break;
      await page.waitForTimeout(200);
    }
    out({ check: "drop", no_reply: lost !== null, steps: dropSteps });
    await page.locator("#steps-panel").screenshot({ path: join(artefacts, "steps-dropped.png") });
    await page.click('[role=tab][data-tab="mappings"]');
    await page.screenshot({ path: join(artefacts, "mappings.png"), fullPage: true });
    // Keyboard: tabs move with the arrow keys.
    await page.focus('[role=tab][data-tab="mappings"]');
    await page.keyboard.press("ArrowRight");
    const tab = await page.$eval("[role=tab][aria-selected=true]", (b) => b.dataset.tab);
    out({ check: "keyboard", tab_after_arrow: tab });
    // Phone width: nothing wider than the screen.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(400);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    await page.screenshot({ path: join(artefacts, "phone.png"), fullPage: true });
    out({ check: "phone", horizontal_overflow_px: overflow });
    // Ending the session: the server logs it.
    await page.click("#term-close");
    await page.waitForTimeout(500);
  }
  const origin = new URL(env("URL")).origin;
  out({ check: "offline", foreign_requests: requests.filter((u) => !u.startsWith(origin)), page_errors: errors });
} finally {
  await ctx.close();
}
