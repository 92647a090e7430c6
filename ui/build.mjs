// Builds the dashboard into dist/: one JS bundle (xterm.js, d3-geo, topojson, the world map
// data), one CSS file and index.html. Everything the page needs is in dist/; nothing is
// fetched at run time.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";

rmSync("dist", { recursive: true, force: true });
mkdirSync("dist");
await build({
  entryPoints: { app: "src/main.js" },
  bundle: true,
  minify: true,
  format: "esm",
  target: ["chrome110", "firefox110", "safari16"],
  outdir: "dist",
  loader: { ".json": "json" },
  legalComments: "linked",
  logLevel: "info",
});
copyFileSync("src/index.html", "dist/index.html");
