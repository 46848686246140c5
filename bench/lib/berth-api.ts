/**
 * Which berth components exist on this branch. Suites whose component has not been merged yet
 * report themselves pending instead of inventing figures; the check is by export name, so a
 * suite turns itself on the day its component lands.
 */

let exportsCache: Promise<Record<string, unknown>> | undefined;

export function berthExports(): Promise<Record<string, unknown>> {
  exportsCache ??= import('../../src/index.js') as Promise<Record<string, unknown>>;
  return exportsCache;
}

/** Undefined when every name is exported by berth; else `pending: <names> not merged yet`. */
export async function pendingUnless(...names: string[]): Promise<string | undefined> {
  const api = await berthExports();
  const missing = names.filter((n) => !(n in api));
  return missing.length === 0 ? undefined : `pending: ${missing.join(', ')} not merged yet`;
}
