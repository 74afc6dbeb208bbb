// A small static server for the demo and the benchmark page: web/ at /, and the public
// conformance cases at /cases/public.json and /cases/public-smp.json (tests/cases/). Loopback only.
//   node web/server.mjs [port]      (default 8080)
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const WEB = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.dirname(WEB);
const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".wasm": "application/wasm",
  ".png": "image/png",
  ".ts": "text/plain; charset=utf-8",
};

function resolve(root, urlPath) {
  if (urlPath === "/cases/public.json") return path.join(ROOT, "tests", "cases", "public.json");
  if (urlPath === "/cases/public-smp.json") return path.join(ROOT, "tests", "cases", "public-smp.json");
  const p = path.normalize(path.join(root, decodeURIComponent(urlPath)));
  if (p !== root && !p.startsWith(root + path.sep)) return null;
  // web/'s own node_modules are the build and test tools, not for the page.
  if (root === WEB && p.startsWith(path.join(WEB, "node_modules"))) return null;
  return p.endsWith(path.sep) || p === root ? path.join(p, "index.html") : p;
}

/** Starts the server; resolves to { server, url }. Port 0 picks a free one. `options.root`
 *  serves another folder (default web/); `options.headers` are added to every response. */
export function serve(port = 0, host = "127.0.0.1", options = {}) {
  const root = path.resolve(options.root ?? WEB);
  const extra = options.headers ?? {};
  const server = http.createServer((req, res) => {
    const file = resolve(root, new URL(req.url, "http://x").pathname);
    if (!file) {
      res.writeHead(403).end("forbidden");
      return;
    }
    fs.readFile(file, (err, data) => {
      if (err) {
        res.writeHead(404, { "content-type": "text/plain" }).end("not found");
        return;
      }
      res.writeHead(200, {
        "content-type": TYPES[path.extname(file)] ?? "application/octet-stream",
        "cache-control": "no-store",
        ...extra,
      });
      res.end(data);
    });
  });
  return new Promise((ok) =>
    server.listen(port, host, () => ok({ server, url: `http://${host}:${server.address().port}/` })),
  );
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { url } = await serve(Number(process.argv[2] ?? 8080));
  console.log(`serving ${WEB} at ${url}`);
}
