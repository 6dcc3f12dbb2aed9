'use strict';
// Endpoint parsing: unix://PATH, unixgram://PATH, udp://HOST:PORT.

const DEFAULT_ENDPOINT = 'unix:///run/sidetrace/agent.sock';

// Returns {scheme, path} or {scheme, host, port}; null when `text` is not an endpoint.
function parseEndpoint(text) {
  if (typeof text !== 'string') return null;
  const sep = text.indexOf('://');
  if (sep <= 0 || sep + 3 >= text.length) return null;
  const scheme = text.slice(0, sep);
  const rest = text.slice(sep + 3);
  if (scheme === 'unix' || scheme === 'unixgram') return { scheme, path: rest };
  if (scheme !== 'udp') return null;
  let host;
  let port;
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']:');
    if (close < 0) return null;
    host = rest.slice(1, close);
    port = rest.slice(close + 2);
  } else {
    const colon = rest.lastIndexOf(':');
    if (colon <= 0) return null;
    host = rest.slice(0, colon);
    port = rest.slice(colon + 1);
  }
  if (!/^\d+$/.test(port) || +port <= 0 || +port > 65535) return null;
  return { scheme, host, port: +port };
}

function formatEndpoint(ep) {
  if (!ep) return '';
  if (ep.scheme === 'udp') return `udp://${ep.host.includes(':') ? `[${ep.host}]` : ep.host}:${ep.port}`;
  return `${ep.scheme}://${ep.path}`;
}

module.exports = { DEFAULT_ENDPOINT, parseEndpoint, formatEndpoint };
