/**
 * "How it works": facts about the served model from GET /api/model.
 *
 * The model card grows as the model is retrained and evaluated, so every field is optional: whatever is
 * present is shown, anything missing is left out, and a failed request leaves the static text alone.
 */

/** Friendly names for the accuracies the training script measures; other keys are shown humanised. */
const ACCURACY_LABELS = {
  mnist_test: "Accuracy on MNIST test digits",
  pen_digits_test: "Accuracy on pen digits by unseen writers",
  pen_digits_train: "Accuracy on pen digits (training writers)",
  pen_digits_validation: "Accuracy on pen digits by validation writers",
  mnist_test_on_paper: "Accuracy on MNIST test digits on grey, grainy paper",
  pen_digits_test_with_a_tap: "Accuracy on pen digits by unseen writers, with a stray tap",
};

const RUNTIME_LABELS = { litert: "LiteRT", tensorflow: "TensorFlow", tflite: "TensorFlow Lite" };

/** Fetch the model card and fill `list` (a <dl>) with one fact per known field. */
export async function showModelFacts(list) {
  let card;
  try {
    const response = await fetch("/api/model", { headers: { Accept: "application/json" } });
    if (!response.ok) {
      return;
    }
    card = await response.json();
  } catch {
    return;
  }
  if (card === null || typeof card !== "object") {
    return;
  }
  const model = card.model !== null && typeof card.model === "object" ? { ...card, ...card.model } : card;
  const facts = [];
  if (typeof model.name === "string") {
    facts.push(["Model", model.name]);
  }
  if (typeof model.runtime === "string") {
    facts.push(["Runtime", RUNTIME_LABELS[model.runtime] || model.runtime]);
  }
  if (Number.isFinite(model.parameters)) {
    facts.push(["Parameters", model.parameters.toLocaleString("en-US")]);
  }
  const accuracy = objectAt(model, "accuracy") || objectAt(model, "accuracies") || {};
  for (const [key, value] of Object.entries(accuracy)) {
    if (Number.isFinite(value) && value >= 0 && value <= 1) {
      facts.push([ACCURACY_LABELS[key] || `Accuracy, ${humanise(key)}`, `${(value * 100).toFixed(1)}%`]);
    }
  }
  if (Number.isInteger(model.protocol)) {
    facts.push(["Protocol", `v${model.protocol}`]);
  }
  const forms = Array.isArray(model.input_forms) ? model.input_forms.filter((f) => typeof f === "string") : [];
  if (forms.length > 0) {
    facts.push(["Accepted input", forms.join(", ")]);
  }
  const training = objectAt(model, "training");
  if (training && Array.isArray(training.data) && training.data.length > 0) {
    facts.push(["Trained on", training.data.filter((item) => typeof item === "string").join("; ")]);
  }
  list.replaceChildren(...facts.map(([term, value]) => fact(term, value)));
}

/** Long values (sentences rather than figures) get a wider box in a smaller type. */
function fact(term, value) {
  const group = document.createElement("div");
  group.className = value.length > 24 ? "fact fact-wide" : "fact";
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  group.append(dt, dd);
  return group;
}

function objectAt(source, key) {
  const value = source[key];
  return value !== null && typeof value === "object" && !Array.isArray(value) ? value : null;
}

function humanise(key) {
  return String(key).replace(/[_-]+/g, " ");
}
