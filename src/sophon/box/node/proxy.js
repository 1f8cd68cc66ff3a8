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
  }
} catch (e) {
  // Never keep a program from starting: without this, fetch is only not proxied.
}
