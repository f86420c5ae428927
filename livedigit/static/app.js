/**
 * The page: the drawing pad streams snapshots over the WebSocket, replies fill the prediction panel.
 *
 * Every message carries a rising id. A reply is shown only if its id is above the last one shown, and
 * Clear and Undo raise that floor, so a reply that arrives late (to a snapshot sent before the canvas
 * changed) can never paint an old guess over a newer one.
 *
 * At most one live snapshot is unanswered at a time: while the server works on one, the page keeps
 * only the newest drawing and sends it when the reply comes. A page then sends no faster than its
 * replies come back, so a busy server is sent fewer snapshots instead of more it would only drop.
 */

import { showModelFacts } from "./about.js";
import { Connection } from "./connection.js";
import { Feedback } from "./feedback.js";
import { DrawingPad } from "./pad.js";
import { Results } from "./results.js";
import { Throttle } from "./throttle.js";

/** Shortest time between two live snapshots while the pen moves. */
const SNAPSHOT_INTERVAL_MS = 70;

const ERROR_TEXT = {
  rate_limited: "Too many submits in a row; wait a moment and try again.",
  overloaded: "The server is busy right now; try again in a moment.",
  internal: "The model failed on this drawing; try again.",
};

const elements = {
  padFrame: document.getElementById("pad-frame"),
  canvas: document.getElementById("pad"),
  undo: document.getElementById("undo"),
  clear: document.getElementById("clear"),
  submit: document.getElementById("submit"),
  status: document.getElementById("status"),
  statusText: document.getElementById("status-text"),
  statusRtt: document.getElementById("status-rtt"),
};

const results = new Results(document.getElementById("results"), document.getElementById("announcer"));

let nextId = 1;
/** Replies with an id at or below this are stale and never shown. */
let shownId = 0;
/** The submit whose answer is awaited, or null. */
let finalId = null;
/** Submit was pressed while offline: send it when the connection is back. */
let submitWanted = false;
/** The last submit sent: its answer is offered for a label with the strokes it carried. */
let lastSubmit = null;
/** The live snapshot whose reply is awaited, or null. */
let liveId = null;
/** The drawing changed while a live snapshot was unanswered: send the newest when its reply comes. */
let liveWanted = false;

const connection = new Connection(socketUrl(), { onReady, onMessage, onStatus });
const feedback = new Feedback(document.getElementById("feedback"), (label) => connection.send(label));
const pad = new DrawingPad(elements.canvas, { onDraw: drawingChanged, onStrokeEnd: strokeEnded });
const snapshots = new Throttle(sendSnapshot, SNAPSHOT_INTERVAL_MS);

elements.submit.addEventListener("click", submit);
elements.clear.addEventListener("click", clear);
elements.undo.addEventListener("click", undo);
document.addEventListener("keydown", shortcut);
// A choice still held when the page goes away (tab closed, app switched) is sent rather than lost.
document.addEventListener("visibilitychange", () => document.visibilityState === "hidden" && feedback.commit());

connection.start();
showModelFacts(document.getElementById("model-facts"));
updateControls();

function socketUrl() {
  return `${window.location.protocol === "https:" ? "wss:" : "ws:"}//${window.location.host}/ws`;
}

function drawingChanged() {
  feedback.commit();
  finalId = null;
  submitWanted = false;
  updateControls();
  snapshots.request();
}

function strokeEnded() {
  updateControls();
  snapshots.flush();
}

function message(type) {
  return {
    type,
    id: nextId++,
    strokes: pad.wireStrokes(connection.limits.max_points),
    surface: pad.surface,
    preview: true,
  };
}

function sendSnapshot() {
  if (pad.empty || !connection.ready) {
    return;
  }
  if (liveId !== null) {
    liveWanted = true;
    return;
  }
  if (connection.congested) {
    snapshots.request();
    return;
  }
  const request = message("snapshot");
  if (connection.send(request)) {
    liveId = request.id;
  }
}

function submit() {
  if (pad.empty) {
    results.say("Draw a digit first, then submit.", "info");
    return;
  }
  snapshots.cancel();
  liveWanted = false;
  feedback.commit();
  const request = message("submit");
  finalId = request.id;
  lastSubmit = request;
  submitWanted = !connection.send(request);
  if (submitWanted) {
    results.say("Not connected: the answer comes as soon as the connection is back.", "info");
  }
}

function clear() {
  feedback.commit();
  pad.clear();
  forget();
  results.reset();
  results.unsay();
  updateControls();
}

function undo() {
  if (feedback.undo()) {
    return;
  }
  feedback.commit();
  if (!pad.undo()) {
    return;
  }
  forget();
  results.unsay();
  if (pad.empty) {
    results.reset();
  } else {
    snapshots.flush();
  }
  updateControls();
}

/** Ignore every reply to what was sent so far: the drawing they describe is gone. */
function forget() {
  snapshots.cancel();
  liveWanted = false;
  shownId = nextId - 1;
  finalId = null;
  submitWanted = false;
}

function updateControls() {
  elements.undo.disabled = pad.empty;
  elements.clear.disabled = pad.empty;
  elements.padFrame.dataset.empty = String(pad.empty);
}

function shortcut(event) {
  if (event.defaultPrevented || event.isComposing) {
    return;
  }
  const command = event.ctrlKey || event.metaKey;
  if (command && !event.altKey && !event.shiftKey && event.key.toLowerCase() === "z") {
    event.preventDefault();
    undo();
    return;
  }
  if (command || event.altKey) {
    return;
  }
  const onControl = event.target instanceof Element && event.target.closest("button, a, input, textarea, select");
  if (/^[0-9]$/.test(event.key) && feedback.active) {
    event.preventDefault();
    feedback.choose(Number(event.key));
  } else if (event.key === "Enter" && !onControl) {
    event.preventDefault();
    submit();
  } else if (event.key === "Escape" || event.key === "Delete") {
    event.preventDefault();
    clear();
  }
}

function onReady(hello) {
  const rate = hello.limits && Number(hello.limits.snapshot_rate);
  snapshots.interval = rate > 0 ? Math.max(SNAPSHOT_INTERVAL_MS, 1000 / rate) : SNAPSHOT_INTERVAL_MS;
  liveId = null; // a new connection: nothing sent on it is awaited
  liveWanted = false;
  feedback.resend();
  if (pad.empty) {
    return;
  }
  if (submitWanted || finalId !== null) {
    const request = message("submit");
    finalId = request.id;
    lastSubmit = request;
    submitWanted = !connection.send(request);
  } else {
    sendSnapshot();
  }
}

function onMessage(reply) {
  if (liveId !== null && reply.id === liveId) {
    liveId = null;
    if (liveWanted) {
      liveWanted = false;
      snapshots.request();
    }
  }
  if (feedback.handle(reply)) {
    return;
  }
  if (reply.type === "dropped" || !Number.isInteger(reply.id) || reply.id <= shownId) {
    return;
  }
  const isFinal = reply.id === finalId;
  if (reply.type === "prediction" || reply.type === "empty") {
    shownId = reply.id;
    results.unsay();
    if (isFinal) {
      finalId = null;
    }
    if (reply.type === "empty") {
      results.showEmpty(isFinal);
    } else if (isFinal) {
      results.showFinal(reply);
      offerLabel(reply);
    } else {
      results.showLive(reply);
    }
  } else if (reply.type === "error") {
    if (isFinal) {
      finalId = null;
    }
    const text = ERROR_TEXT[reply.code] || `The server could not use this drawing: ${reply.message || reply.code}`;
    results.say(text, "error");
  }
}

/** Ask whether the final answer was right, for the drawing its submit carried. */
function offerLabel(reply) {
  if (lastSubmit === null || lastSubmit.id !== reply.id) {
    return;
  }
  feedback.offer({
    submitId: reply.id,
    strokes: lastSubmit.strokes,
    surface: lastSubmit.surface,
    predicted: reply.digit,
    probabilities: reply.probabilities,
    verdict: reply.verdict,
  });
}

function onStatus(status) {
  elements.status.dataset.state = status.state;
  if (status.state === "reconnecting") {
    elements.statusText.textContent = `${capitalise(status.reason || "disconnected")}, reconnecting…`;
  } else {
    elements.statusText.textContent = status.state === "connected" ? "Connected" : "Connecting…";
  }
  const showRtt = status.state === "connected" && status.rtt !== null;
  elements.statusRtt.hidden = !showRtt;
  elements.statusRtt.textContent = showRtt ? `${status.rtt < 1 ? "<1" : Math.round(status.rtt)} ms` : "";
}

function capitalise(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}
