// Build the web UI: copy our sources (src/) and the vendor files from node_modules
// into the Python package's static folder, which the proxy serves under /web/.
// Run by setup.py after `npm ci`; by hand: `npm ci && npm run build`.
// No bundler: the browser loads our ES modules as they are.

import { cpSync, mkdirSync, rmSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "trioport", "roles", "proxy", "webui", "static");

// The names the proxy and index.html expect, and where npm puts them.
const vendor = {
  "xterm.js": "@xterm/xterm/lib/xterm.js",
  "xterm.css": "@xterm/xterm/css/xterm.css",
  "addon-fit.js": "@xterm/addon-fit/lib/addon-fit.js",
  "xterm-LICENSE.txt": "@xterm/xterm/LICENSE",
  "addon-fit-LICENSE.txt": "@xterm/addon-fit/LICENSE",
};

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "vendor"), { recursive: true });
cpSync(join(here, "src"), out, { recursive: true });
for (const [name, from] of Object.entries(vendor)) {
  const source = join(here, "node_modules", from);
  if (!existsSync(source)) {
    console.error(`build.mjs: ${source} is missing: run npm ci first`);
    process.exit(1);
  }
  cpSync(source, join(out, "vendor", name));
}
console.log(`build.mjs: web UI built into ${out}`);
