/**
 * TaskClient's active calls by id. The client picks small ids and takes a freed one again (the
 * protocol lets an id be reused once its final frame has arrived, and never before), so the
 * table is a plain array and a free list: no hashing and no table churn on the hot path.
 */
export class CallTable<C> {
  // Id 0 names no task (a FATAL about the connection carries it): ids start at 1.
  #slots: (C | undefined)[] = [undefined];
  #free: number[] = [];
  size = 0;

  /** Stores `call` under a free id and returns the id. */
  add(call: C): number {
    const id = this.#free.length > 0 ? this.#free.pop()! : this.#slots.length;
    this.#slots[id] = call;
    this.size++;
    return id;
  }

  get(id: number): C | undefined {
    return id < this.#slots.length ? this.#slots[id] : undefined;
  }

  delete(id: number): void {
    if (id < this.#slots.length && this.#slots[id] !== undefined) {
      this.#slots[id] = undefined;
      this.#free.push(id);
      this.size--;
    }
  }

  values(): C[] {
    return this.#slots.filter((c): c is C => c !== undefined);
  }

  clear(): void {
    this.#slots = [undefined];
    this.#free = [];
    this.size = 0;
  }
}
