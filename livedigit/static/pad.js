/**
 * The drawing surface: pointer input (mouse, touch and pen alike) turned into strokes, painted smoothly.
 *
 * Strokes are kept in the canvas's CSS pixels, the unit sent to the server together with the surface
 * size, so what is drawn and what is recognised are the same shape whatever the screen's pixel density.
 * The canvas backing store follows the element's size times devicePixelRatio, so lines stay sharp.
 */

/** Smallest distance, in CSS pixels, between two recorded points; finer input adds nothing visible. */
const MIN_STEP = 0.75;

/** Pen width as a fraction of the canvas side: a marker-like line, close to the ink the model is used to. */
const PEN_WIDTH = 0.055;

/** Points per CSS pixel of canvas side in what is sent: enough for the model's 20 px box, far fewer than drawn. */
const SEND_STEP = 1 / 120;

export class DrawingPad {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{onDraw?: () => void, onStrokeEnd?: () => void}} callbacks onDraw fires as the pen moves,
   *   onStrokeEnd when it lifts (or the browser cancels the stroke).
   */
  constructor(canvas, { onDraw = () => {}, onStrokeEnd = () => {} } = {}) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.onDraw = onDraw;
    this.onStrokeEnd = onStrokeEnd;
    /** @type {number[][][]} every stroke, the one being drawn included, as [x, y] in CSS pixels */
    this.strokes = [];
    this.pointerId = null;
    this.origin = { left: 0, top: 0 };
    this.width = 0;
    this.height = 0;
    this.frame = 0;

    canvas.addEventListener("pointerdown", (event) => this.#down(event));
    canvas.addEventListener("pointermove", (event) => this.#move(event));
    canvas.addEventListener("pointerup", (event) => this.#up(event));
    canvas.addEventListener("pointercancel", (event) => this.#up(event));
    canvas.addEventListener("lostpointercapture", (event) => this.#up(event));
    canvas.addEventListener("contextmenu", (event) => event.preventDefault());
    // touch-action: none stops scrolling, but the browser still runs its gesture detector on the touches:
    // a fast stroke ends as a "fling", and the tap that cancels a fling is swallowed, so a Submit tapped
    // right after drawing would do nothing. Cancelling touchstart keeps the canvas's touches out of it.
    canvas.addEventListener("touchstart", (event) => event.preventDefault(), { passive: false });
    new ResizeObserver(() => this.#resize()).observe(canvas);
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => this.#invalidate());
    this.#resize();
  }

  /** True when nothing has been drawn. */
  get empty() {
    return this.strokes.length === 0;
  }

  /** True while a pointer is down on the canvas. */
  get drawing() {
    return this.pointerId !== null;
  }

  /** The drawing area, [width, height] in CSS pixels, as the protocol's `surface`. */
  get surface() {
    return [Math.round(this.width), Math.round(this.height)];
  }

  /**
   * The strokes as the protocol wants them: thinned to a step that suits the model, rounded to 0.1 px,
   * and never more than `maxPoints` points in all (the step grows until they fit).
   */
  wireStrokes(maxPoints = 1024) {
    let step = Math.max(1, Math.max(this.width, this.height) * SEND_STEP);
    for (;;) {
      const strokes = this.strokes.map((stroke) => thin(stroke, step));
      const count = strokes.reduce((total, stroke) => total + stroke.length, 0);
      if (count <= maxPoints) {
        return strokes;
      }
      step *= 1.5;
    }
  }

  /** Remove the last stroke (ending it if the pen is still down); returns whether one was removed. */
  undo() {
    if (this.empty) {
      return false;
    }
    this.#release();
    this.strokes.pop();
    this.#invalidate();
    return true;
  }

  /** Remove every stroke. */
  clear() {
    this.#release();
    this.strokes = [];
    this.#invalidate();
  }

  #down(event) {
    if (this.drawing || (event.pointerType === "mouse" && event.button !== 0)) {
      return;
    }
    event.preventDefault();
    this.pointerId = event.pointerId;
    try {
      this.canvas.setPointerCapture(event.pointerId);
    } catch {
      // The pointer may already be gone (a very short tap); the stroke still records this point.
    }
    const box = this.canvas.getBoundingClientRect();
    this.origin = { left: box.left, top: box.top };
    this.strokes.push([this.#point(event)]);
    this.#invalidate();
    this.onDraw();
  }

  #move(event) {
    if (event.pointerId !== this.pointerId) {
      return;
    }
    event.preventDefault();
    const stroke = this.strokes[this.strokes.length - 1];
    const events = typeof event.getCoalescedEvents === "function" ? event.getCoalescedEvents() : [];
    let added = false;
    for (const sample of events.length > 0 ? events : [event]) {
      const point = this.#point(sample);
      const last = stroke[stroke.length - 1];
      if (Math.hypot(point[0] - last[0], point[1] - last[1]) >= MIN_STEP) {
        stroke.push(point);
        added = true;
      }
    }
    if (added) {
      this.#invalidate();
      this.onDraw();
    }
  }

  #up(event) {
    if (event.pointerId !== this.pointerId) {
      return;
    }
    if (event.type === "pointerup") {
      const stroke = this.strokes[this.strokes.length - 1];
      const point = this.#point(event);
      const last = stroke[stroke.length - 1];
      if (Math.hypot(point[0] - last[0], point[1] - last[1]) >= MIN_STEP) {
        stroke.push(point);
      }
    }
    this.#release();
    this.#invalidate();
    this.onStrokeEnd();
  }

  /** Forget the active pointer so later events from it are ignored. */
  #release() {
    if (this.pointerId === null) {
      return;
    }
    const id = this.pointerId;
    this.pointerId = null;
    if (this.canvas.hasPointerCapture(id)) {
      this.canvas.releasePointerCapture(id);
    }
  }

  #point(event) {
    const x = clamp(event.clientX - this.origin.left, 0, this.width);
    const y = clamp(event.clientY - this.origin.top, 0, this.height);
    return [x, y];
  }

  /** Match the backing store to the element; rescale the strokes if the element changed size. */
  #resize() {
    const width = this.canvas.clientWidth;
    const height = this.canvas.clientHeight;
    if (width === 0 || height === 0) {
      return;
    }
    if (this.width > 0 && (width !== this.width || height !== this.height)) {
      const sx = width / this.width;
      const sy = height / this.height;
      this.strokes = this.strokes.map((stroke) => stroke.map(([x, y]) => [x * sx, y * sy]));
    }
    this.width = width;
    this.height = height;
    const ratio = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(width * ratio);
    this.canvas.height = Math.round(height * ratio);
    this.#paint();
  }

  #invalidate() {
    if (this.frame === 0) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        this.#paint();
      });
    }
  }

  #paint() {
    const context = this.context;
    const ratio = this.canvas.width / Math.max(1, this.width);
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.clearRect(0, 0, this.canvas.width, this.canvas.height);
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    const ink = getComputedStyle(this.canvas).getPropertyValue("--ink").trim() || "#161a2b";
    const width = Math.max(4, Math.min(this.width, this.height) * PEN_WIDTH);
    context.strokeStyle = ink;
    context.fillStyle = ink;
    context.lineWidth = width;
    context.lineCap = "round";
    context.lineJoin = "round";
    for (const stroke of this.strokes) {
      paintStroke(context, stroke, width);
    }
  }
}

/** A stroke as a smooth curve: quadratic segments through the midpoints, the samples as control points. */
function paintStroke(context, stroke, width) {
  if (stroke.length === 1) {
    context.beginPath();
    context.arc(stroke[0][0], stroke[0][1], width / 2, 0, 2 * Math.PI);
    context.fill();
    return;
  }
  context.beginPath();
  context.moveTo(stroke[0][0], stroke[0][1]);
  for (let i = 1; i < stroke.length - 1; i += 1) {
    const [x, y] = stroke[i];
    const [nx, ny] = stroke[i + 1];
    context.quadraticCurveTo(x, y, (x + nx) / 2, (y + ny) / 2);
  }
  const [lx, ly] = stroke[stroke.length - 1];
  context.lineTo(lx, ly);
  context.stroke();
}

/** Keep the first and last points and those at least `step` from the previously kept one. */
function thin(stroke, step) {
  const kept = [round(stroke[0])];
  let last = stroke[0];
  for (let i = 1; i < stroke.length; i += 1) {
    const point = stroke[i];
    if (i === stroke.length - 1 || Math.hypot(point[0] - last[0], point[1] - last[1]) >= step) {
      kept.push(round(point));
      last = point;
    }
  }
  return kept;
}

function round([x, y]) {
  return [Math.round(x * 10) / 10, Math.round(y * 10) / 10];
}

function clamp(value, low, high) {
  return Math.min(Math.max(value, low), high);
}
