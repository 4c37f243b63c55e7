// Builds the console into ../calls_server/console_assets/ (or the folder after --out):
// 1. TypeScript types of the API from ../openapi.yaml (openapi-typescript), src/schema.d.ts;
// 2. a type check of the whole console against them (tsc): a spec change the console does
//    not follow fails here;
// 3. one minified bundle of script and one of style (esbuild), named by their content's
//    hash, and index.html naming them.
// The output depends only on the sources, the spec and the locked toolchain: a test
// rebuilds it and compares it with the committed files (tests/ecosystem/test_console.py).
import { execFileSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const outFlag = process.argv.indexOf("--out");
const out = resolve(outFlag > 0 ? process.argv[outFlag + 1] : join(here, "../calls_server/console_assets"));
const bin = (name) => join(here, "node_modules/.bin", name);
const run = (name, args) => execFileSync(bin(name), args, { cwd: here, stdio: "inherit" });

run("openapi-typescript", ["../openapi.yaml", "-o", "src/schema.d.ts", "--root-types"]);
run("tsc", ["-p", "tsconfig.json"]);

mkdirSync(out, { recursive: true });
for (const name of readdirSync(out)) rmSync(join(out, name));
const built = await esbuild.build({
  absWorkingDir: here,
  entryPoints: ["src/main.tsx"],
  entryNames: "console-[hash]",
  outdir: out,
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2020",
  jsx: "automatic",
  jsxImportSource: "preact",
  legalComments: "eof",
  metafile: true,
  logLevel: "warning",
});
const outputs = Object.keys(built.metafile.outputs).map((path) => basename(path));
const script = outputs.find((name) => name.endsWith(".js"));
const style = outputs.find((name) => name.endsWith(".css"));
const page = readFileSync(join(here, "src/index.html"), "utf8")
  .replace("%SCRIPT%", script)
  .replace("%STYLE%", style);
writeFileSync(join(out, "index.html"), page);
const sizes = readdirSync(out).map((name) => `${name} ${readFileSync(join(out, name)).length} B`);
console.log(`built into ${out}:\n  ${sizes.join("\n  ")}`);
