/**
 * The prediction panel: the guessed digit, ten probability bars, the image the model saw, and messages.
 *
 * Live guesses update silently (a screen reader announcing every frame would be noise); the final answer
 * after Submit is announced once through the page's polite live region. The wording follows the reply's
 * verdict: "It's a 3", "Not sure: a 4 or a 9?" or "That doesn't look like a digit".
 */

/** Below this confidence a final "digit" answer is worded as a guess. */
const SURE = 0.6;

/** The verdicts the protocol defines; an unknown one is shown as a plain digit. */
const VERDICTS = new Set(["digit", "unsure", "not_a_digit"]);

/**
 * What the panel says about a prediction, by its verdict: a digit, two digits too close to call (the
 * reply's `candidates`), or a drawing unlike any digit. The bars always show all ten probabilities.
 */
function wording(prediction, final) {
  const { digit, confidence, probabilities } = prediction;
  if (prediction.verdict === "not_a_digit") {
    return {
      label: final ? "That doesn't look like a digit" : "Doesn't look like a digit yet",
      detail: `Closest is ${digit}, at ${percent(confidence)}`,
    };
  }
  if (prediction.verdict === "unsure") {
    const [first, second] = Array.isArray(prediction.candidates)
      ? prediction.candidates
      : [digit, runnerUp(probabilities, digit)];
    return {
      label: `Not sure: ${a(first)} or ${a(second)}?`,
      detail: `${first}: ${percent(probabilities[first])}, ${second}: ${percent(probabilities[second])}`,
    };
  }
  if (!final) {
    return { label: `Looks like ${digit}`, detail: `${percent(confidence)} confident so far` };
  }
  if (confidence >= SURE) {
    return { label: `It's ${a(digit)}`, detail: `${percent(confidence)} confident` };
  }
  const second = runnerUp(probabilities, digit);
  return {
    label: `Maybe ${a(digit)}?`,
    detail: `Only ${percent(confidence)} confident${second === null ? "" : `; ${second} is next`}`,
  };
}

export class Results {
  constructor(root, announcer) {
    this.root = root;
    this.announcer = announcer;
    this.digit = root.querySelector("#answer-digit");
    this.label = root.querySelector("#answer-label");
    this.detail = root.querySelector("#answer-detail");
    this.bars = [...root.querySelectorAll(".bar")];
    this.preview = root.querySelector("#preview");
    this.message = root.querySelector("#message");
    this.reset();
  }

  /** Back to the empty state: no digit, flat bars, blank preview. */
  reset(label = "Waiting for a drawing", detail = "Start drawing and the model guesses live.") {
    this.root.dataset.state = "idle";
    delete this.root.dataset.digit;
    delete this.root.dataset.verdict;
    this.digit.textContent = "–";
    this.label.textContent = label;
    this.detail.textContent = detail;
    this.#paintBars(null);
    this.#paintPreview(null);
  }

  /** A live prediction while drawing. */
  showLive(prediction) {
    this.root.dataset.state = "live";
    this.#showDigit(prediction);
    const { label, detail } = wording(prediction, false);
    this.label.textContent = label;
    this.detail.textContent = detail;
    this.#paintBars(prediction.probabilities);
    this.#paintPreview(prediction.preview);
  }

  /** The answer to a submit, shown prominently and announced. */
  showFinal(prediction) {
    this.root.dataset.state = "final";
    this.#showDigit(prediction);
    const { label, detail } = wording(prediction, true);
    this.label.textContent = label;
    this.detail.textContent = detail;
    this.#paintBars(prediction.probabilities);
    this.#paintPreview(prediction.preview);
    this.announce(`${label} ${detail}.`);
  }

  /** The big answer: the digit, or a question mark when the drawing does not look like one. */
  #showDigit(prediction) {
    const verdict = VERDICTS.has(prediction.verdict) ? prediction.verdict : "digit";
    this.root.dataset.digit = String(prediction.digit);
    this.root.dataset.verdict = verdict;
    this.digit.textContent = verdict === "not_a_digit" ? "?" : String(prediction.digit);
  }

  /** The server found nothing to recognise (no ink, or a dot). */
  showEmpty(final) {
    this.reset(final ? "Nothing to recognise" : "Keep drawing", final
      ? "That looks like a dot. Draw a whole digit, then submit."
      : "Too small to recognise yet.");
    if (final) {
      this.announce("Nothing to recognise. Draw a whole digit, then submit.");
    }
  }

  /** Show a message under the results: kind "error" (announced as an alert) or "info". */
  say(text, kind = "error") {
    this.message.textContent = text;
    this.message.dataset.kind = kind;
    this.message.hidden = false;
  }

  unsay() {
    this.message.hidden = true;
    this.message.textContent = "";
  }

  announce(text) {
    // Clearing first makes a repeated identical answer be announced again.
    this.announcer.textContent = "";
    requestAnimationFrame(() => {
      this.announcer.textContent = text;
    });
  }

  #paintBars(probabilities) {
    const top = probabilities ? probabilities.indexOf(Math.max(...probabilities)) : -1;
    this.bars.forEach((bar, digit) => {
      const p = probabilities ? clamp01(probabilities[digit]) : 0;
      bar.style.setProperty("--p", p.toFixed(4));
      bar.dataset.top = String(digit === top);
      bar.querySelector(".bar-value").textContent = p >= 0.01 ? percent(p) : "";
      bar.setAttribute("aria-label", probabilities ? `${digit}: ${percent(p)}` : `${digit}: no prediction`);
    });
  }

  /** Draw the model's 28x28 input (base64, one byte per pixel, ink high) as white ink on black. */
  #paintPreview(encoded) {
    const context = this.preview.getContext("2d");
    const image = context.createImageData(28, 28);
    if (typeof encoded === "string") {
      let bytes;
      try {
        bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
      } catch {
        bytes = new Uint8Array(0);
      }
      for (let i = 0; i < 784 && i < bytes.length; i += 1) {
        image.data.set([bytes[i], bytes[i], bytes[i], 255], i * 4);
      }
    }
    for (let i = 3; i < image.data.length; i += 4) {
      image.data[i] = 255;
    }
    context.putImageData(image, 0, 0);
  }
}

/** A digit with its article, as said aloud: "a 4", "an 8". */
function a(digit) {
  return `${digit === 8 ? "an" : "a"} ${digit}`;
}

function runnerUp(probabilities, digit) {
  let best = null;
  probabilities.forEach((p, d) => {
    if (d !== digit && (best === null || p > probabilities[best])) {
      best = d;
    }
  });
  return best;
}

function percent(p) {
  const value = clamp01(p) * 100;
  if (value > 0 && value < 1) {
    return "<1%";
  }
  return `${Math.round(value)}%`;
}

function clamp01(p) {
  return Number.isFinite(p) ? Math.min(Math.max(p, 0), 1) : 0;
}
