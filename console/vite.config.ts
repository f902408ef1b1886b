// The console's build: hashed files under dist/assets (served as immutable by the control
// plane) and dist/index.html. JSX is compiled for Preact by esbuild, no plugin needed.
import { defineConfig } from "vite";

export default defineConfig({
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: { outDir: "dist", assetsDir: "assets", sourcemap: false, chunkSizeWarningLimit: 1024 },
  server: { proxy: { "/v1": { target: "http://127.0.0.1:8080", ws: true } } },
});
