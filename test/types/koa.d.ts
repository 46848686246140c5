/**
 * The part of Koa 3's API the tests use (the package ships no types, and adding @types/koa
 * would be a dependency for one constructor).
 */
declare module 'koa' {
  import type { EventEmitter } from 'node:events';
  import type { IncomingMessage, ServerResponse } from 'node:http';

  export default class Koa extends EventEmitter {
    use(
      middleware: (ctx: { body: unknown; path: string }, next: () => Promise<void>) => unknown,
    ): this;
    callback(): (req: IncomingMessage, res: ServerResponse) => Promise<void>;
  }
}
