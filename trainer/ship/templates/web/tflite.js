// A .tflite file read in the browser: the input and output tensors, the TFLite metadata
// (name, version, normalization), the labels file and open_set.json (the "none of these" class)
// zipped at the end of the file, as edge/metadata.py reads them (trainer/export/metadata.py
// writes them). Every read is
// bounds-checked: a damaged file is one readable Error, never a blank page.

export class ModelFileError extends Error {}

const TENSOR_TYPES = ("float32 float16 int32 uint8 int64 string bool int16 complex64 int8 float64 complex128 "
  + "uint64 resource variant uint32 uint16 int4 bfloat16").split(" ");
const TENSOR_AXIS_LABELS = 2;  // AssociatedFileType
const NORMALIZATION_OPTIONS = 1;  // ProcessUnitOptions

// ------------------------------------------------------------------ flatbuffers
class Buf {
  constructor(bytes, what) {
    this.b = bytes;
    this.v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.what = what;
  }
  check(pos, size) {
    if (!(pos >= 0 && size >= 0 && pos + size <= this.b.length)) {
      throw new ModelFileError(`${this.what}: a read at ${pos} (+${size}) falls outside its ${this.b.length} bytes`);
    }
    return pos;
  }
  u8(p) { return this.v.getUint8(this.check(p, 1)); }
  i8(p) { return this.v.getInt8(this.check(p, 1)); }
  u16(p) { return this.v.getUint16(this.check(p, 2), true); }
  u32(p) { return this.v.getUint32(this.check(p, 4), true); }
  i32(p) { return this.v.getInt32(this.check(p, 4), true); }
  f32(p) { return this.v.getFloat32(this.check(p, 4), true); }
  i64(p) { return Number(this.v.getBigInt64(this.check(p, 8), true)); }
  u64(p) { return Number(this.v.getBigUint64(this.check(p, 8), true)); }
  root() { return new Table(this, this.u32(0)); }
}

class Table {
  constructor(buf, pos) {
    this.buf = buf;
    this.pos = pos;
    this.vt = pos - buf.i32(pos);
    this.vtSize = buf.u16(this.vt);
  }
  field(slot) {  // absolute position of a field, or 0 when absent
    const o = 4 + 2 * slot;
    if (o + 2 > this.vtSize) return 0;
    const off = this.buf.u16(this.vt + o);
    return off ? this.pos + off : 0;
  }
  scalar(slot, kind, dflt = 0) {
    const p = this.field(slot);
    return p ? this.buf[kind](p) : dflt;
  }
  deref(slot) {
    const p = this.field(slot);
    return p ? p + this.buf.u32(p) : 0;
  }
  table(slot) {
    const p = this.deref(slot);
    return p ? new Table(this.buf, p) : null;
  }
  vector(slot) {  // [position of the first element, length]
    const p = this.deref(slot);
    return p ? [p + 4, this.buf.u32(p)] : [0, 0];
  }
  tables(slot) {
    const [start, n] = this.vector(slot);
    this.buf.check(start, 4 * n);
    return Array.from({length: n}, (_, i) => new Table(this.buf, start + 4 * i + this.buf.u32(start + 4 * i)));
  }
  scalars(slot, kind, size) {
    const [start, n] = this.vector(slot);
    if (!start) return null;
    this.buf.check(start, size * n);
    return Array.from({length: n}, (_, i) => this.buf[kind](start + size * i));
  }
  bytes(slot) {
    const [start, n] = this.vector(slot);
    return start ? this.buf.b.subarray(this.buf.check(start, n), start + n) : null;
  }
  string(slot) {
    const bytes = this.bytes(slot);
    return bytes === null ? null : new TextDecoder().decode(bytes);
  }
}

// ------------------------------------------------------------------ zip (associated files)
async function zipFiles(b) {
  const files = new Map();
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let eocd = -1;
  for (let i = b.length - 22; i >= Math.max(0, b.length - 65557); i--) {
    if (v.getUint32(i, true) === 0x06054b50) { eocd = i; break; }
  }
  if (eocd < 0) return files;
  const count = v.getUint16(eocd + 10, true), cdSize = v.getUint32(eocd + 12, true);
  const cdOffset = v.getUint32(eocd + 16, true);
  const shift = eocd - cdSize - cdOffset;  // bytes before the zip when its offsets count from the zip (zipfile's "concat")
  let p = cdOffset + shift;
  for (let k = 0; k < count; k++) {
    if (p < 0 || p + 46 > b.length || v.getUint32(p, true) !== 0x02014b50) {
      throw new ModelFileError("the zip of associated files is corrupt");
    }
    const method = v.getUint16(p + 10, true), size = v.getUint32(p + 20, true);
    const nameLen = v.getUint16(p + 28, true), extraLen = v.getUint16(p + 30, true);
    const commentLen = v.getUint16(p + 32, true), local = v.getUint32(p + 42, true) + shift;
    const name = new TextDecoder().decode(b.subarray(p + 46, p + 46 + nameLen));
    if (local < 0 || local + 30 > b.length) throw new ModelFileError(`zip entry ${name} is out of bounds`);
    const start = local + 30 + v.getUint16(local + 26, true) + v.getUint16(local + 28, true);
    const data = b.subarray(start, start + size);
    if (data.length !== size) throw new ModelFileError(`zip entry ${name} is truncated`);
    if (method === 0) files.set(name, data);
    else if (method === 8) files.set(name, await inflate(data));
    p += 46 + nameLen + extraLen + commentLen;
  }
  return files;
}

async function inflate(data) {
  const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function splitLines(bytes) {  // one label a line; inner blank lines keep their index
  const lines = new TextDecoder().decode(bytes).split("\n").map((l) => l.replace(/\r$/, ""));
  while (lines.length && !lines[lines.length - 1].trim()) lines.pop();
  return lines;
}

// open_set.json (edge.metadata.OpenSet) -> {openSet: {label, threshold, keep}, warning: null};
// {openSet: null, warning} when it is damaged or its label is not the last label (the reject
// class is the last output); {openSet: null, warning: null} without one.
export function readOpenSet(raw, labels) {
  if (!raw) return {openSet: null, warning: null};
  const damaged = (why) => ({openSet: null, warning: `open_set.json is damaged (${why}); no none-of-these class`});
  let spec;
  try {
    spec = JSON.parse(new TextDecoder("utf-8", {fatal: true}).decode(raw));
  } catch (e) {
    return damaged(e.message);
  }
  if (!spec || typeof spec !== "object" || Array.isArray(spec) || typeof spec.label !== "string" || !spec.label) {
    return damaged("no label");
  }
  const number = (v) => (v === undefined || v === null ? null : typeof v === "number" && Number.isFinite(v) ? v : NaN);
  const threshold = number(spec.threshold), keep = number(spec.keep);
  if (Number.isNaN(threshold) || Number.isNaN(keep)) return damaged("threshold or keep is not a number");
  if (!labels || !labels.length || labels[labels.length - 1] !== spec.label) {
    const last = labels && labels.length ? `the last label is ${JSON.stringify(labels[labels.length - 1])}` : "the model has no labels";
    return {openSet: null, warning: `open_set.json names ${JSON.stringify(spec.label)} but ${last}; no none-of-these class`};
  }
  return {openSet: {label: spec.label, threshold, keep}, warning: null};
}

// The model's own none-of-these rule (edge.postprocess.is_none_of_these without a threshold): the
// reject class (an open-set model's last output) ranks first, ties going to the lower index as
// the page ranks them; rejectIndex null: never. Here, not in app.js, so node can test it.
export function noneOfThese(scores, rejectIndex) {
  if (rejectIndex === null || rejectIndex === undefined || !scores.length) return false;
  let top = 0;
  for (let i = 1; i < scores.length; i++) if (scores[i] > scores[top]) top = i;
  return top === rejectIndex;
}

// ------------------------------------------------------------------ the model
function tensorInfo(t) {
  const q = t.table(4);
  const scale = q ? q.scalars(2, "f32", 4) : null, zero = q ? q.scalars(3, "i64", 8) : null;
  const type = t.scalar(1, "i8");
  return {
    name: t.string(3),
    shape: t.scalars(0, "i32", 4) || [],
    signature: t.scalars(7, "i32", 4) || t.scalars(0, "i32", 4) || [],
    dtype: TENSOR_TYPES[type] || `type_${type}`,
    quantization: [scale && scale.length ? scale[0] : 0, zero && zero.length ? zero[0] : 0],
  };
}

function metadataEntries(model, buf) {
  const entries = new Map(), buffers = model.tables(4);
  for (const m of model.tables(6)) {
    const name = m.string(0), index = m.scalar(1, "u32");
    if (name === null || entries.has(name)) continue;
    if (index >= buffers.length) throw new ModelFileError(`metadata ${name} names buffer ${index} of ${buffers.length}`);
    const b = buffers[index], offset = b.scalar(1, "u64"), size = b.scalar(2, "u64");
    entries.set(name, offset > 1 ? buf.b.subarray(buf.check(offset, size), offset + size) : (b.bytes(0) || new Uint8Array()));
  }
  return entries;
}

function normalization(tensor) {
  for (const unit of tensor.tables(4)) {
    if (unit.scalar(0, "u8") === NORMALIZATION_OPTIONS) {
      const options = unit.table(1);
      return options ? [options.scalars(0, "f32", 4), options.scalars(1, "f32", 4)] : [null, null];
    }
  }
  return [null, null];
}

// bytes (Uint8Array of a whole .tflite) -> {input, output, metadata: {name, ..., mean, std, labels, openSet}}
export async function readModel(bytes) {
  if (bytes.length < 8 || new TextDecoder().decode(bytes.subarray(4, 8)) !== "TFL3") {
    throw new ModelFileError(`not a TFLite model (${bytes.length} bytes, no "TFL3" identifier)`);
  }
  try {
    const buf = new Buf(bytes, "corrupt TFLite model");
    const model = buf.root();
    const subgraphs = model.tables(2);
    if (!subgraphs.length) throw new ModelFileError("corrupt TFLite model: no subgraphs");
    const sg = subgraphs[0], tensors = sg.tables(0);
    const pick = (slot, what) => {
      const ids = sg.scalars(slot, "i32", 4) || [];
      if (ids.length !== 1 || !(ids[0] >= 0 && ids[0] < tensors.length)) {
        throw new ModelFileError(`the model has ${ids.length} ${what}s; an image classifier has one`);
      }
      return tensorInfo(tensors[ids[0]]);
    };
    const input = pick(1, "input"), output = pick(2, "output");
    const meta = await readMetadata(metadataEntries(model, buf).get("TFLITE_METADATA"), bytes);
    return {input, output, metadata: meta};
  } catch (e) {
    if (e instanceof ModelFileError) throw e;
    throw new ModelFileError(`corrupt TFLite model (${e.message})`);
  }
}

async function readMetadata(raw, bytes) {
  if (!raw) {
    return {hasMetadata: false, name: null, description: null, version: null, author: null, license: null,
            mean: null, std: null, labelFile: null, labels: null, openSet: null, warnings: []};
  }
  if (new TextDecoder().decode(raw.subarray(4, 8)) !== "M001") throw new ModelFileError("corrupt TFLite metadata");
  const meta = new Buf(raw, "corrupt TFLite metadata").root();
  const sgs = meta.tables(3);
  const inputs = sgs.length ? sgs[0].tables(2) : [], outputs = sgs.length ? sgs[0].tables(3) : [];
  const [mean, std] = inputs.length ? normalization(inputs[0]) : [null, null];
  let labelFile = null;
  for (const f of outputs.length ? outputs[0].tables(6) : []) {
    if (f.scalar(2, "i8") === TENSOR_AXIS_LABELS) { labelFile = f.string(0); break; }
  }
  const files = await zipFiles(bytes);
  const labels = labelFile !== null && files.has(labelFile) ? splitLines(files.get(labelFile)) : null;
  const {openSet, warning} = readOpenSet(files.get("open_set.json"), labels);
  return {hasMetadata: true, name: meta.string(0), description: meta.string(1), version: meta.string(2),
          author: meta.string(4), license: meta.string(5), mean, std, labelFile, labels, openSet,
          warnings: warning ? [warning] : []};
}
