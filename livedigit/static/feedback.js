/**
 * "Right" / "Wrong? It was: 0 … 9" under a final answer: the person's label, sent to the server to be
 * kept for training (protocol v1 `label`).
 *
 * A choice is held while its drawing is on screen, so a mistaken tap can be undone without telling the
 * server anything; it is sent when the drawing goes (cleared, changed, submitted again) or the page is
 * hidden. Sent labels wait in an outbox until the server answers `stored`: a label the server could not
 * take (`unavailable`, `rate_limited`) or that was cut off by a lost connection is sent again, with the
 * same key, so it is stored once however often it is sent.
 */

/** How many times a label is sent before the page gives up on it. */
const MAX_ATTEMPTS = 6;

/** Wait before sending again when the server said when (`retry_after_ms`) but not how long. */
const RETRY_MS = 2000;

/** Errors after which the same label is worth sending again. */
const RETRYABLE = new Set(["unavailable", "rate_limited"]);

const WRITER_KEY = "livedigit-writer";
const ID_PATTERN = /^[A-Za-z0-9_-]{8,64}$/;

export class Feedback {
  /**
   * @param {HTMLElement} root the #feedback group; its status line is a polite live region, so each
   *   step (chosen, undone, saved) is announced to screen readers
   * @param {(message: object) => boolean} send false when not connected (the label waits for `resend`)
   */
  constructor(root, send) {
    this.root = root;
    this.send = send;
    this.status = root.querySelector("#feedback-status");
    this.undoButton = root.querySelector("#feedback-undo");
    this.right = root.querySelector("#feedback-right");
    this.digits = [...root.querySelectorAll("[data-label]")];
    this.writer = writerId();
    this.answer = null;
    this.choice = null;
    this.outbox = new Map();
    /** The id of the label sent last: its outcome is the one shown. */
    this.latest = null;
    this.count = 0;
    this.right.addEventListener("click", () => this.answer && this.choose(this.answer.predicted));
    for (const button of this.digits) {
      button.addEventListener("click", () => this.choose(Number(button.dataset.label)));
    }
    this.undoButton.addEventListener("click", () => this.undo());
    this.#show("off");
  }

  /** True while the person can pick a label (keys 0-9 then choose). */
  get active() {
    return this.answer !== null;
  }

  /**
   * Ask about a final answer. `answer`: the submit's id, strokes and surface as sent, and what the model
   * said (`predicted`, `probabilities`, `verdict` when the reply had one).
   */
  offer(answer) {
    this.commit();
    this.answer = answer;
    this.choice = null;
    this.#show("ask", "Tap Right, or the digit it was (keys 0 to 9).");
  }

  /** Hold `digit` as the label of the answer on screen; sent when the drawing goes. */
  choose(digit) {
    if (!this.active || !Number.isInteger(digit) || digit < 0 || digit > 9) {
      return;
    }
    this.choice = digit;
    const noted = digit === this.answer.predicted ? `Right: it is a ${digit}.` : `Noted: it was a ${digit}.`;
    this.#show("chosen", `${noted} Sent when you clear or draw again.`);
  }

  /** Cancel a choice not sent yet; returns whether there was one. */
  undo() {
    if (this.choice === null) {
      return false;
    }
    this.choice = null;
    this.#show("ask", "Choice undone.");
    return true;
  }

  /** The drawing is going: send the choice held for it (if any) and stop asking. */
  commit() {
    const { answer, choice } = this;
    this.answer = null;
    this.choice = null;
    if (answer === null) {
      return;
    }
    if (choice === null) {
      this.#show("off");
      return;
    }
    this.count += 1;
    const label = {
      type: "label",
      id: `label-${this.count}`,
      strokes: answer.strokes,
      surface: answer.surface,
      digit: choice,
      writer: this.writer,
      key: randomId(),
      submit_id: answer.submitId,
      predicted: answer.predicted,
      probabilities: answer.probabilities,
    };
    if (typeof answer.verdict === "string") {
      label.verdict = answer.verdict;
    }
    this.outbox.set(label.id, { label, attempts: 0, timer: 0 });
    this.latest = label.id;
    this.#show("sending", `Saving: it was a ${choice}…`);
    this.#transmit(label.id);
  }

  /** The connection is (back) up: send every label still unanswered. */
  resend() {
    for (const id of this.outbox.keys()) {
      this.#transmit(id);
    }
  }

  /** Take the reply to a label; false when `reply` answers something else. */
  handle(reply) {
    const entry = typeof reply.id === "string" ? this.outbox.get(reply.id) : undefined;
    if (entry === undefined) {
      return false;
    }
    const latest = reply.id === this.latest;
    if (reply.type === "stored") {
      this.outbox.delete(reply.id);
      if (latest && !this.active) {
        this.#show("saved", `Saved: it was a ${entry.label.digit}. Thank you!`);
      }
    } else if (reply.type === "error" && RETRYABLE.has(reply.code) && entry.attempts < MAX_ATTEMPTS) {
      const wait = Number.isFinite(reply.retry_after_ms) ? reply.retry_after_ms : RETRY_MS;
      clearTimeout(entry.timer);
      entry.timer = setTimeout(() => this.#transmit(reply.id), wait * (1 + Math.random() / 2));
    } else {
      this.outbox.delete(reply.id);
      if (latest && !this.active) {
        this.#show("failed", "The label could not be saved. Thank you all the same.");
      }
    }
    return true;
  }

  #transmit(id) {
    const entry = this.outbox.get(id);
    if (entry === undefined) {
      return;
    }
    clearTimeout(entry.timer);
    if (this.send(entry.label)) {
      entry.attempts += 1;
    }
  }

  #show(state, text = "") {
    this.root.dataset.state = state;
    const asking = state === "ask" || state === "chosen";
    this.root.setAttribute("aria-hidden", String(state === "off"));
    const predicted = this.answer === null ? null : this.answer.predicted;
    for (const button of [this.right, ...this.digits]) {
      button.disabled = !asking;
      const digit = button === this.right ? predicted : Number(button.dataset.label);
      button.setAttribute("aria-pressed", String(state === "chosen" && digit === this.choice));
    }
    this.undoButton.hidden = state !== "chosen";
    this.status.textContent = text;
  }
}

/** This browser's random id, kept in localStorage so its labels can be grouped; a fresh one per page
 * when storage is unavailable (private windows may refuse it). */
function writerId() {
  try {
    const saved = window.localStorage.getItem(WRITER_KEY);
    if (saved !== null && ID_PATTERN.test(saved)) {
      return saved;
    }
  } catch {
    return randomId();
  }
  const id = randomId();
  try {
    window.localStorage.setItem(WRITER_KEY, id);
  } catch {
    // Storage is full or refused: this page's labels still share one id.
  }
  return id;
}

/** 22 random characters of [A-Za-z0-9_-] (128 bits). */
function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
