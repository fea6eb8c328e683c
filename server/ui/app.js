// The try-it page: each picked or dropped image goes to POST classify (the API programs use), one request per
// image so that one bad file spoils only its own answer. The API key lives in this page's memory only.
"use strict";

const IN_FLIGHT = 4; // requests at once

const $ = (id) => document.getElementById(id);
let files = [];

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function describeServer() {
  try {
    const answer = await fetch("readyz", { cache: "no-store" });
    const body = await answer.json();
    const models = body.models || (body.model ? [{ name: body.model, backend: body.backend }] : []);
    const picker = $("model");
    picker.replaceChildren(...models.map((m) => new Option(m.version ? `${m.name} (version ${m.version})` : m.name,
      JSON.stringify({ name: m.name, version: m.version || null }))));
    $("model-row").hidden = models.length < 2;
    if (answer.ok) {
      const one = models.length === 1 ? `${models[0].name}, on ${models[0].backend}` :
        `${models.length} models: ${[...new Set(models.map((m) => m.name))].join(", ")}`;
      $("server").textContent = `Serving ${one}.`;
    } else {
      $("server").textContent = `The server is not ready (${body.status}${body.reason ? ": " + body.reason : ""}).`;
    }
  } catch (e) {
    $("server").textContent = `No answer from the server (${e.message}).`;
  }
}

function classifyUrl() {
  const params = new URLSearchParams();
  const k = Math.min(1000, Math.max(1, parseInt($("top-k").value, 10) || 5));
  params.set("top_k", String(k));
  if (!$("model-row").hidden && $("model").value) { // several models served: the one picked
    const chosen = JSON.parse($("model").value);
    params.set("model", chosen.name);
    if (chosen.version) params.set("version", chosen.version);
  }
  return `classify?${params}`;
}

function addCard(file) {
  const card = $("result").content.firstElementChild.cloneNode(true);
  const img = card.querySelector("img");
  card.querySelector("figcaption").textContent = file.name;
  if (file.type.startsWith("image/")) {
    img.src = URL.createObjectURL(file);
    img.alt = file.name;
    img.addEventListener("error", () => { img.hidden = true; }, { once: true });
  } else {
    img.hidden = true;
  }
  $("results").prepend(card);
  $("empty").hidden = true;
  return card.querySelector(".answer");
}

function percent(score) {
  return `${(score * 100).toFixed(score >= 0.995 || score < 0.0005 ? 0 : 1)}%`;
}

function showPredictions(box, body) {
  const list = document.createElement("ol");
  list.className = "predictions";
  for (const p of body.results[0].predictions) {
    const row = document.createElement("li");
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.label;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.style.width = `${Math.max(0, Math.min(1, p.score)) * 100}%`;
    bar.append(fill);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = percent(p.score);
    row.append(label, bar, score);
    list.append(row);
  }
  const t = body.timings_ms;
  const timings = document.createElement("p");
  timings.className = "timings";
  timings.textContent = `${body.model} version ${body.version} · server ${t.total.toFixed(1)} ms ` +
    `(decode ${t.decode.toFixed(1)}, ` +
    `queue ${t.queue.toFixed(1)}, inference ${t.inference.toFixed(1)})`;
  box.replaceChildren(list, timings);
}

function showFailure(box, message) {
  const p = document.createElement("p");
  p.className = "error";
  p.setAttribute("role", "alert");
  p.textContent = message;
  box.replaceChildren(p);
}

async function classifyOne(file, box) {
  const form = new FormData();
  form.append("file", file, file.name);
  const key = $("api-key").value.trim();
  const headers = key ? { "X-API-Key": key } : {};
  let answer;
  try {
    answer = await fetch(classifyUrl(), { method: "POST", body: form, headers });
  } catch (e) {
    showFailure(box, `No answer from the server (${e.message}).`);
    return;
  }
  let body = null;
  try {
    body = await answer.json();
  } catch (e) {
    body = { error: `the server answered ${answer.status} without a JSON body` };
  }
  if (answer.ok) {
    showPredictions(box, body);
    return;
  }
  if (answer.status === 401) showError("The server asks for an API key: enter it above and press Classify.");
  showFailure(box, `Not classified: ${body.error} (HTTP ${answer.status}).`);
}

async function classifyAll() {
  showError("");
  if (!files.length) {
    showError("Pick or drop at least one image first.");
    return;
  }
  const queue = files.map((f) => [f, addCard(f)]).reverse();
  const worker = async () => {
    while (queue.length) {
      const [file, box] = queue.pop();
      await classifyOne(file, box);
    }
  };
  $("classify").disabled = true;
  try {
    await Promise.all(Array.from({ length: Math.min(IN_FLIGHT, queue.length) }, worker));
  } finally {
    $("classify").disabled = false;
  }
}

function take(list) {
  files = Array.from(list);
  if (files.length) classifyAll();
}

document.addEventListener("DOMContentLoaded", () => {
  describeServer();
  $("files").addEventListener("change", (e) => take(e.target.files));
  $("form").addEventListener("submit", (e) => {
    e.preventDefault();
    classifyAll();
  });
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    take(e.dataTransfer.files);
  });
});
