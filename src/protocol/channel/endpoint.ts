/**
 * Where a task server is: `host:port`, `[v6]:port`, a port alone (on 127.0.0.1), `unix:/path`
 * or a path, as text or as an object. Pure: parsing and naming only.
 */

import { isIP } from 'node:net';
import { InvalidOptionError } from '../../errors.js';

/** A task server's address: a host (a name or an IP address) and port, or a unix socket path. */
export type Endpoint = { host: string; port: number } | { path: string };

/** `host:port`, `[v6]:port` for IPv6, or `unix:/path`: how berth names an endpoint. */
export function formatEndpoint(endpoint: Endpoint): string {
  if ('path' in endpoint) return `unix:${endpoint.path}`;
  const { host, port } = endpoint;
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

function badAddress(text: string, option: string): InvalidOptionError {
  return new InvalidOptionError(
    option,
    `bad address ${JSON.stringify(text)}: expected host:port, [v6]:port, a port, or unix:/path`,
  );
}

/** Parses an endpoint given as text or checks one given as an object. */
export function parseEndpoint(value: unknown, option = 'endpoints'): Endpoint {
  if (typeof value === 'object' && value !== null) {
    const { host, port, path } = value as { host?: unknown; port?: unknown; path?: unknown };
    if (typeof path === 'string' && path !== '' && host === undefined && port === undefined) {
      return { path };
    }
    if (
      typeof host === 'string' &&
      host !== '' &&
      typeof port === 'number' &&
      Number.isInteger(port) &&
      port >= 1 &&
      port <= 65_535 &&
      path === undefined
    ) {
      return { host, port };
    }
    throw new InvalidOptionError(
      option,
      `${option}: an endpoint object is { host, port } (port 1 to 65535) or { path }, got ${JSON.stringify(value)}`,
    );
  }
  if (typeof value !== 'string' || value === '') throw badAddress(String(value), option);
  const text = value;
  if (text.startsWith('unix:')) {
    if (text.length === 5) throw badAddress(text, option);
    return { path: text.slice(5) };
  }
  if (text.startsWith('/')) return { path: text };
  let host = '127.0.0.1';
  let portText = text;
  const v6 = /^\[([^\]]+)\]:(\d+)$/.exec(text);
  if (v6) {
    host = v6[1]!;
    portText = v6[2]!;
  } else if (text.includes(':')) {
    const i = text.lastIndexOf(':');
    host = text.slice(0, i) || host;
    portText = text.slice(i + 1);
  }
  const port = /^\d+$/.test(portText) ? Number(portText) : Number.NaN;
  if (!Number.isInteger(port) || port < 1 || port > 65_535) throw badAddress(text, option);
  return { host, port };
}
