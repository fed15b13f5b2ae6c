// The page: load model.tflite with LiteRT.js (CPU, WebAssembly), classify photos, files, folders
// and camera frames with the pixels edge.preprocess makes (preprocess.js), show the top labels.
//
// Scripting hook: window.edgeTransfer.ready resolves when the model is loaded (rejects with the
// page's error), window.edgeTransfer.classify(urlOrBlob) returns a Promise of every
// [{label, score}] sorted by score (ties: lower class index first, as edge.postprocess ranks).
// A model with an open-set class (open_set.json, its label the last one) says "none of these"
// when that class ranks first, as `edge classify` does (edge.postprocess.is_none_of_these).

import {loadLiteRt, loadAndCompile, Tensor} from "./vendor/litertjs/core/index.js";
import {noneOfThese, readModel} from "./tflite.js";
import {
  bitmapRgba, boxDownscale, decodeRgb, draftScale, exifOrientation, orient, resizeBilinear, rgbaToRgb, toInput,
} from "./preprocess.js";

const config = JSON.parse(document.getElementById("config").textContent);
const $ = (id) => document.getElementById(id);
const IMAGE = /\.(jpe?g|png|bmp|gif|webp)$/i;  // edge.preprocess.IMAGE_EXTENSIONS

// Overrides the model's none-of-these decision when set: a function (categories) -> true when
// the photo shows none of the classes; the page then says so above its labels.
const hooks = {noneOfThese: null};

// ------------------------------------------------------------------ scores (edge.postprocess)
const SOFTMAX_SCALE = 1 / 256;

export function toScores(raw, tensor) {
  const [scale, zero] = tensor.quantization;
  const integer = tensor.dtype !== "float32";
  const values = Float32Array.from(raw, (q) => (integer && scale !== 0 ? scale * (q - zero) : q));
  if (integer && scale === SOFTMAX_SCALE && zero === (tensor.dtype === "int8" ? -128 : 0)) return values;
  let sum = 0, ok = values.length > 0;
  for (const v of values) { ok = ok && v >= 0 && v <= 1; sum += v; }
  if (ok && Math.abs(sum - 1) <= 0.01) return values;
  const max = Math.max(...values), e = Array.from(values, (v) => Math.exp(v - max));
  const total = e.reduce((a, b) => a + b, 0);
  return Float32Array.from(e, (v) => v / total);
}

function verdict(scores, m) {
  const r = m.rejectIndex;
  return {unknown: noneOfThese(scores, r), noneScore: r === null ? null : scores[r]};
}

function ranked(scores, labels) {
  return Array.from(scores, (score, index) => ({index, label: labels ? labels[index] : String(index), score}))
    .sort((a, b) => b.score - a.score || a.index - b.index)
    .map(({label, score}) => ({label, score}));
}

// ------------------------------------------------------------------ loading
function checkModel(info) {
  const {input, output} = info;
  if (input.signature.length !== 4 || input.signature[0] !== 1 || input.signature[3] !== 3
      || input.signature.some((d) => d < 1)) {
    throw new Error(`the model's input is ${JSON.stringify(input.signature)}, not one RGB photo [1, H, W, 3] `
      + "(files converted before batch-1 exports declare [-1, H, W, 3]: convert again)");
  }
  if (!["uint8", "float32"].includes(input.dtype)) throw new Error(`input type ${input.dtype} is not supported here`);
  if (!["uint8", "float32"].includes(output.dtype)) throw new Error(`output type ${output.dtype} is not supported here`);
  const classes = output.shape.slice(1).reduce((a, b) => a * b, 1);
  if (output.shape[0] !== 1 || classes < 1) throw new Error(`the model's output ${JSON.stringify(output.shape)} is not one score vector`);
  return classes;
}

// LiteRT.js's own log (its C++ INFO / WARNING lines go to console.error by default): kept for the
// page's "runtime log"; ERROR lines still reach the console.
const runtimeLog = [];

async function loadRuntime() {
  // The page runs on the CPU (WebAssembly, XNNPACK). While it starts, LiteRT.js would open a
  // WebGPU device it does not need here (a GPU process, and a warning where there is none): it is
  // not shown navigator.gpu, and its warning about that goes to the runtime log.
  const gpu = "gpu" in navigator, warn = console.warn;
  if (gpu) Object.defineProperty(navigator, "gpu", {value: undefined, configurable: true});
  console.warn = (...args) => (/WebGPU/.test(String(args[0])) ? runtimeLog.push(args.map(String).join(" ")) : warn(...args));
  window.Module = {  // the Emscripten module options LiteRT.js's loader passes on
    print: (line) => runtimeLog.push(line),
    printErr: (line) => (runtimeLog.push(line), /^(ERROR|FATAL)/.test(line) && console.error(line)),
  };
  try {
    await loadLiteRt(new URL(config.runtime, document.baseURI).href);
  } finally {
    console.warn = warn;
    if (gpu) delete navigator.gpu;
  }
}

async function load() {
  const t0 = performance.now();
  let response;
  try {
    response = await fetch(config.model);
  } catch (e) {
    throw new Error(`cannot fetch ${config.model}: ${e.message}`);
  }
  if (!response.ok) throw new Error(`cannot fetch ${config.model}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  let info;
  try {
    info = await readModel(bytes);
  } catch (e) {
    throw new Error(`${config.model} is not a usable model: ${e.message}`);
  }
  const classes = checkModel(info);
  let labels = info.metadata.labels;
  if (!labels || labels.length !== classes) labels = null;  // categories named by index, like edge
  const rejectIndex = labels && info.metadata.openSet ? classes - 1 : null;  // open_set.json: the last label
  await loadRuntime();
  let model;
  try {
    model = await loadAndCompile(bytes, {accelerator: "wasm"});
  } catch (e) {
    throw new Error(`LiteRT.js could not load ${config.model}: ${e.message || e}`);
  }
  const [, height, width] = info.input.signature;
  return {model, info, labels, rejectIndex, height, width, classes, loadMs: performance.now() - t0};
}

const ready = load();
ready.catch(() => {});  // shown on the page (below), not an unhandled rejection

// ------------------------------------------------------------------ classifying
let queue = Promise.resolve();  // one inference at a time: a compiled model is not re-entrant

async function infer(m, pixels) {
  const data = toInput(pixels, m.info.input.dtype, m.info.metadata.mean, m.info.metadata.std);
  const input = new Tensor(data, [1, m.height, m.width, 3]);
  let outputs;
  try {
    outputs = await m.model.run(input);
  } finally {
    input.delete();
  }
  try {
    return toScores(outputs[0].toTypedArray(), m.info.output);
  } finally {
    outputs.forEach((t) => t.delete());
  }
}

async function toBlob(source) {
  if (source instanceof Blob) return source;
  const response = await fetch(source);
  if (!response.ok) throw new Error(`cannot fetch ${source}: HTTP ${response.status}`);
  return response.blob();
}

// urlOrBlob -> {categories, scores, unknown (none of these), noneScore (the reject class's score,
// null without one), pixels (the model input, RGB uint8), width, height (decoded),
// orientation, draft (1, or the JPEG scale edge.preprocess decodes at), ms: {decode, resize, inference}}
async function classifyDetailed(source) {
  const m = await ready;
  const blob = await toBlob(source);
  const t0 = performance.now();
  const image = await decodeRgb(blob, [m.height, m.width]);
  const t1 = performance.now();
  const pixels = resizeBilinear(image.rgb, image.height, image.width, m.height, m.width);
  const t2 = performance.now();
  const run = queue.then(() => infer(m, pixels));
  queue = run.catch(() => {});
  const scores = await run;
  const t3 = performance.now();
  return {categories: ranked(scores, m.labels), scores: Array.from(scores), ...verdict(scores, m), pixels,
          width: image.width, height: image.height, orientation: image.orientation, draft: image.draft,
          ms: {decode: t1 - t0, resize: t2 - t1, inference: t3 - t2}};
}

async function classifyPixels(rgb, width, height) {
  const m = await ready;
  const t0 = performance.now();
  const pixels = resizeBilinear(rgb, height, width, m.height, m.width);
  const run = queue.then(() => infer(m, pixels));
  queue = run.catch(() => {});
  const scores = await run;
  return {categories: ranked(scores, m.labels), ...verdict(scores, m), pixels, ms: performance.now() - t0};
}

const loaded = ready.then((m) => ({labels: m.labels, input: m.info.input, output: m.info.output, variant: config.variant,
                                   litertjs: config.litertjs, loadMs: m.loadMs,
                                   openSet: m.rejectIndex === null ? null : m.info.metadata.openSet}));
loaded.catch(() => {});  // a failed load is shown on the page; scripts awaiting edgeTransfer.ready still get it

window.edgeTransfer = {
  ready: loaded,
  classify: (urlOrBlob) => classifyDetailed(urlOrBlob).then((r) => r.categories),
  classifyDetailed,
  hooks,
  preprocess: {boxDownscale, decodeRgb, draftScale, exifOrientation, orient, resizeBilinear},
};

// ------------------------------------------------------------------ the page
const fmt = (x, digits = 3) => (x === null || x === undefined ? "n/a" : Number(x).toFixed(digits));

function showCategories(parent, r) {
  const categories = r.categories;
  const none = hooks.noneOfThese ? hooks.noneOfThese(categories) : r.unknown;
  if (none) {  // with the reject class's score when the model has one
    const row = Object.assign(document.createElement("div"), {className: "cat none"});
    row.append(Object.assign(document.createElement("span"), {textContent: "none of these"}));
    if (r.noneScore !== null && r.noneScore !== undefined) {
      row.append(Object.assign(document.createElement("span"), {textContent: fmt(r.noneScore)}));
    }
    parent.append(row);
  }
  for (const c of categories.slice(0, config.top_k)) {
    const row = document.createElement("div");
    row.className = "cat";
    row.append(Object.assign(document.createElement("span"), {textContent: c.label}),
               Object.assign(document.createElement("span"), {textContent: fmt(c.score)}));
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.append(Object.assign(document.createElement("span"), {style: `width:${(100 * c.score).toFixed(1)}%`}));
    parent.append(row, bar);
  }
}

function thumbnail(pixels, m) {
  const canvas = Object.assign(document.createElement("canvas"), {width: m.width, height: m.height});
  const rgba = new Uint8ClampedArray(m.width * m.height * 4);
  for (let i = 0, j = 0; i < pixels.length; i += 3, j += 4) {
    rgba[j] = pixels[i]; rgba[j + 1] = pixels[i + 1]; rgba[j + 2] = pixels[i + 2]; rgba[j + 3] = 255;
  }
  canvas.getContext("2d").putImageData(new ImageData(rgba, m.width, m.height), 0, 0);
  canvas.title = "the photo as the model sees it";
  return canvas;
}

const stats = {n: 0, failed: 0, inference: 0};

async function classifyFiles(files) {
  const m = await ready;
  const photos = files.filter((f) => IMAGE.test(f.name) && !f.name.startsWith("."))
    .sort((a, b) => (a.webkitRelativePath || a.name).localeCompare(b.webkitRelativePath || b.name));
  for (const file of photos) {
    const box = document.createElement("div"), body = document.createElement("div");
    box.className = "result";
    body.className = "body";
    body.append(Object.assign(document.createElement("div"), {className: "name", textContent: file.webkitRelativePath || file.name}));
    box.append(body);
    $("results").append(box);
    try {
      const r = await classifyDetailed(file);
      box.prepend(thumbnail(r.pixels, m));
      showCategories(body, r);
      box.append(Object.assign(document.createElement("div"), {className: "ms muted",
        textContent: `${r.width}×${r.height}${r.draft > 1 ? ` (JPEG at 1/${r.draft})` : ""}${r.orientation > 1 ? ` (EXIF ${r.orientation})` : ""} · decode ${fmt(r.ms.decode, 1)} ms · resize ${fmt(r.ms.resize, 1)} ms · model ${fmt(r.ms.inference, 1)} ms`}));
      stats.n += 1;
      stats.inference += r.ms.inference;
    } catch (e) {
      box.classList.add("failed");
      body.append(Object.assign(document.createElement("div"), {textContent: `cannot classify: ${e.message || e}`}));
      stats.failed += 1;
    }
    $("summary").textContent = `${stats.n} photos classified, mean model time ${fmt(stats.inference / Math.max(1, stats.n), 1)} ms`
      + (stats.failed ? `; ${stats.failed} could not be read` : "");
  }
}

async function entryFiles(entry) {  // a dropped folder, recursively
  if (entry.isFile) return [await new Promise((ok, fail) => entry.file(ok, fail))];
  const reader = entry.createReader(), out = [];
  for (;;) {
    const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
    if (!batch.length) return out;
    for (const e of batch) out.push(...await entryFiles(e));
  }
}

async function dropped(event) {
  event.preventDefault();
  $("drop").classList.remove("over");
  const entries = [...event.dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  const files = entries.length ? (await Promise.all(entries.map(entryFiles))).flat() : [...event.dataTransfer.files];
  classifyFiles(files);
}

let stream = null;

async function camera() {
  if (stream) {
    stream.getTracks().forEach((t) => t.stop());
    stream = null;
    $("camera").classList.remove("on");
    $("camera-button").textContent = "use the camera";
    return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({video: {facingMode: "environment"}, audio: false});
  } catch (e) {
    $("live").textContent = `no camera: ${e.message || e.name}`;
    $("camera").classList.add("on");
    return;
  }
  const video = $("video");
  video.srcObject = stream;
  $("camera").classList.add("on");
  $("camera-button").textContent = "stop the camera";
  const m = await ready;
  while (stream) {
    if (video.readyState >= 2 && video.videoWidth) {
      const w = video.videoWidth, h = video.videoHeight;
      const r = await classifyPixels(rgbaToRgb(bitmapRgba(video, w, h)), w, h);
      const live = $("live"), body = document.createElement("div");
      body.className = "body";
      showCategories(body, r);
      live.replaceChildren(thumbnail(r.pixels, m), body);
      live.append(Object.assign(document.createElement("div"), {className: "ms muted", textContent: `frame ${w}×${h} · ${fmt(r.ms, 1)} ms`}));
    }
    await new Promise((ok) => setTimeout(ok, 100));
  }
}

$("pick").addEventListener("change", (e) => classifyFiles([...e.target.files]));
$("folder").addEventListener("change", (e) => classifyFiles([...e.target.files]));
$("camera-button").addEventListener("click", camera);
$("drop").addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", dropped);

ready.then((m) => {
  const status = $("status");
  status.className = "ok";
  status.textContent = `Ready: ${m.classes} labels from the model's metadata, input ${m.width}×${m.height} `
    + `${m.info.input.dtype}; LiteRT.js ${config.litertjs} on the CPU (WebAssembly); loaded in ${fmt(m.loadMs, 0)} ms.`;
  $("runtime-log").textContent = runtimeLog.join("\n");
  $("labels").textContent = `Labels: ${(m.labels || []).join(", ") || "none in the metadata (class numbers)"}.`
    + (m.rejectIndex === null ? "" : ` A photo whose top label is "${m.labels[m.rejectIndex]}" shows none of these.`)
    + m.info.metadata.warnings.map((w) => ` Warning: ${w}.`).join("");
}, (e) => {
  const status = $("status");
  status.className = "error";
  status.textContent = `The model could not be loaded.\n${e.message || e}`;
  $("runtime-log").textContent = runtimeLog.join("\n");
  for (const id of ["pick", "folder", "camera-button"]) $(id).disabled = true;
});
