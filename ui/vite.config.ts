import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// The app is served by `sophon serve` at /, with the API under /v1 on the same origin.
// `npm run dev` proxies the API to a server on SOPHON_URL (default http://127.0.0.1:8000).
const api = process.env.SOPHON_URL ?? "http://127.0.0.1:8000";

export default defineConfig({
  plugins: [react()],
  base: "/",
  build: {
    outDir: "dist",
    target: "es2022",
    sourcemap: false,
    // Monaco is one large lazy chunk, loaded when the editor first opens.
    chunkSizeWarningLimit: 4096,
  },
  worker: { format: "es" },
  server: { proxy: { "/v1": { target: api, changeOrigin: false }, "/healthz": api } },
});
