/**
 * Rate-limit an action while keeping the last request: live snapshots are sent at most once per
 * interval, and the one asked for during the wait still goes out when it ends, so the final shape of a
 * fast stroke is never left unsent.
 */
export class Throttle {
  /**
   * @param {() => void} action
   * @param {number} interval shortest time between two runs, in milliseconds
   */
  constructor(action, interval) {
    this.action = action;
    this.interval = interval;
    this.last = -Infinity;
    this.timer = 0;
  }

  /** Run now if the interval has passed, otherwise once when it does. */
  request() {
    const wait = this.last + this.interval - performance.now();
    if (wait <= 0) {
      this.#run();
    } else if (this.timer === 0) {
      this.timer = setTimeout(() => this.#run(), wait);
    }
  }

  /** Run now, whatever the interval, and drop a pending run. */
  flush() {
    this.#run();
  }

  /** Drop a pending run. */
  cancel() {
    clearTimeout(this.timer);
    this.timer = 0;
  }

  #run() {
    this.cancel();
    this.last = performance.now();
    this.action();
  }
}
