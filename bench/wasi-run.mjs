// Runs a wasm32-wasip1 command module (such as examples/record_cost built for that target) in
// Node's V8, to time code the way Envoy's V8 runs it, or to test it there (examples/escape_check);
// the module's exit status is Node's. The filter library's proxy-wasm imports are
// stubbed; the example never calls them.
//
//   cargo build --release --target wasm32-wasip1 --example record_cost
//   node --no-warnings bench/wasi-run.mjs target/wasm32-wasip1/release/examples/record_cost.wasm bench 1024 100000
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import { argv } from 'node:process';

const wasi = new WASI({ version: 'preview1', args: argv.slice(2), env: {} });
const module = await WebAssembly.compile(await readFile(argv[2]));
const imports = wasi.getImportObject();
imports.env = {};
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.module === 'env') imports.env[imp.name] = () => 0;
}
const instance = await WebAssembly.instantiate(module, imports);
// The library also exports a reactor's _initialize; WASI.start wants a command's exports only.
const exports = Object.fromEntries(
  Object.entries(instance.exports).filter(([name]) => name !== '_initialize'));
process.exitCode = wasi.start({ exports }) ?? 0;
