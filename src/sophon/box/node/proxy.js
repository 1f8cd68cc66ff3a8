// Loaded into every node process of a box (NODE_OPTIONS=--require, set by the server when
// this file is installed): Node's own fetch goes through the egress door on versions that
// ignore NODE_USE_ENV_PROXY (before 24). npm, http and https modules are not affected.
'use strict';
try {
  const major = Number(process.versions.node.split('.')[0]);
  if (major < 24 && (process.env.HTTPS_PROXY || process.env.HTTP_PROXY)) {
    const undici = require('./node_modules/undici');
    // EnvHttpProxyAgent warns that it is experimental, in every program: kept quiet.
    const warn = process.emitWarning;
    process.emitWarning = () => {};
    try {
      undici.setGlobalDispatcher(new undici.EnvHttpProxyAgent());
    } finally {
      process.emitWarning = warn;
    }
    if (major < 20) {
      // Node 18's own fetch (an older undici inside it) takes the dispatcher but reports
      // a refused tunnel as "Request was cancelled": the pinned undici's fetch, whole,
      // says what the door answered.
      for (const name of ['fetch', 'Headers', 'Request', 'Response', 'FormData']) {
        globalThis[name] = undici[name];
      }
    }
  }
} catch (e) {
  // Never keep a program from starting: without this, fetch is only not proxied.
}
