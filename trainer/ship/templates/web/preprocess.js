// edge.preprocess in the browser: photo -> RGB uint8 pixels of the model's input size.
//
// The same steps as the Python definition (edge/preprocess.py), so the page feeds the model the
// pixels `python -m edge classify` feeds it: EXIF orientation, any image to RGB (transparency on
// black), half-pixel bilinear resize computed in float32 in TensorFlow's order (bit-identical
// to tf.image.resize and to edge.preprocess.resize_bilinear), truncation to uint8. The one
// difference is the decoder: the browser's own JPEG / PNG / WebP decoder instead of Pillow's,
// measured in docs/web.md. Pure functions except decodeRgb (needs a browser); node runs the rest.

const f32 = Math.fround;

// ------------------------------------------------------------------ EXIF orientation
// The orientation tag (0x0112) of a JPEG (APP1 "Exif"), PNG (eXIf chunk) or WebP (EXIF chunk);
// 1 when there is none or it cannot be read, as Pillow's ImageOps.exif_transpose treats it.
export function exifOrientation(bytes) {
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const tiff = findTiff(b);
  if (tiff < 0) return 1;
  try {
    return orientationFromTiff(b, tiff);
  } catch (e) {
    return 1;  // a damaged EXIF block: the photo as stored
  }
}

function u16be(b, i) { return (b[i] << 8) | b[i + 1]; }
function u32be(b, i) { return ((b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]) >>> 0; }
function u32le(b, i) { return (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)) >>> 0; }
function ascii(b, i, n) { return String.fromCharCode(...b.subarray(i, i + n)); }

function findTiff(b) {
  if (b[0] === 0xff && b[1] === 0xd8) {  // JPEG: walk the markers up to the image data
    let i = 2;
    while (i + 4 <= b.length && b[i] === 0xff) {
      const marker = b[i + 1];
      if (marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) { i += 2; continue; }
      if (marker === 0xda || marker === 0xd9) break;  // start of scan / end: no EXIF before it
      const len = u16be(b, i + 2);
      if (marker === 0xe1 && len >= 8 && ascii(b, i + 4, 6) === "Exif\0\0") return i + 10;
      i += 2 + len;
    }
    return -1;
  }
  if (ascii(b, 1, 3) === "PNG") {
    let i = 8;
    while (i + 8 <= b.length) {
      const len = u32be(b, i), type = ascii(b, i + 4, 4);
      if (type === "eXIf") return i + 8;
      if (type === "IDAT" || type === "IEND") break;
      i += 12 + len;
    }
    return -1;
  }
  if (ascii(b, 0, 4) === "RIFF" && ascii(b, 8, 4) === "WEBP") {
    let i = 12;
    while (i + 8 <= b.length) {
      const type = ascii(b, i, 4), len = u32le(b, i + 4);
      if (type === "EXIF") return ascii(b, i + 8, 6) === "Exif\0\0" ? i + 14 : i + 8;
      i += 8 + len + (len & 1);
    }
  }
  return -1;
}

function orientationFromTiff(b, t) {
  const little = ascii(b, t, 2) === "II";
  if (!little && ascii(b, t, 2) !== "MM") return 1;
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const u16 = (i) => view.getUint16(i, little), u32 = (i) => view.getUint32(i, little);
  const ifd = t + u32(t + 4);
  const n = u16(ifd);
  for (let k = 0; k < n; k++) {
    const e = ifd + 2 + 12 * k;
    if (u16(e) === 0x0112) {
      const value = u16(e + 8);
      return value >= 1 && value <= 8 ? value : 1;
    }
  }
  return 1;
}

// Pillow's exif_transpose: orientation -> the transpose that shows the photo upright.
// rgb: Uint8Array (h * w * 3). Returns {rgb, width, height}.
export function orient(rgb, width, height, orientation) {
  if (!(orientation >= 2 && orientation <= 8)) return {rgb, width, height};
  const swap = orientation >= 5;
  const ow = swap ? height : width, oh = swap ? width : height;
  const out = new Uint8Array(rgb.length);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      let sx, sy;  // the source pixel shown at (x, y)
      switch (orientation) {
        case 2: sx = width - 1 - x; sy = y; break;                  // mirror
        case 3: sx = width - 1 - x; sy = height - 1 - y; break;     // rotate 180
        case 4: sx = x; sy = height - 1 - y; break;                 // flip vertically
        case 5: sx = y; sy = x; break;                              // transpose
        case 6: sx = y; sy = height - 1 - x; break;                 // rotate 90 clockwise
        case 7: sx = width - 1 - y; sy = height - 1 - x; break;     // transverse
        default: sx = width - 1 - y; sy = x; break;                 // 8: rotate 90 counter-clockwise
      }
      const s = 3 * (sy * width + sx), d = 3 * (y * ow + x);
      out[d] = rgb[s]; out[d + 1] = rgb[s + 1]; out[d + 2] = rgb[s + 2];
    }
  }
  return {rgb: out, width: ow, height: oh};
}

// ------------------------------------------------------------------ resize
// Lower index, upper index and lerp per output position, as TensorFlow computes them (float32).
function axisWeights(inSize, outSize) {
  const scale = f32(f32(inSize) / f32(outSize));
  const lower = new Int32Array(outSize), upper = new Int32Array(outSize), lerp = new Float32Array(outSize);
  for (let i = 0; i < outSize; i++) {
    const pos = f32(f32(f32(i + 0.5) * scale) - 0.5);
    const floor = Math.floor(pos);
    lower[i] = Math.max(floor, 0);
    upper[i] = Math.min(Math.ceil(pos), inSize - 1);
    lerp[i] = f32(pos - floor);
  }
  return {lower, upper, lerp};
}

// Half-pixel bilinear resize of RGB uint8 (h * w * 3) to outH x outW, truncated to uint8:
// edge.preprocess.resize, value for value. Each source row gets its horizontal lerp first, then
// rows are blended: left + (right - left) * dx, then top + (bottom - top) * dy, each step float32.
export function resizeBilinear(rgb, height, width, outH, outW) {
  if (height === outH && width === outW) return new Uint8Array(rgb);
  const ys = axisWeights(height, outH), xs = axisWeights(width, outW);
  const rowCache = new Map();
  const rowLerp = (y) => {
    let row = rowCache.get(y);
    if (row) return row;
    row = new Float32Array(outW * 3);
    const base = y * width * 3;
    for (let x = 0; x < outW; x++) {
      const l = base + 3 * xs.lower[x], r = base + 3 * xs.upper[x], dx = xs.lerp[x];
      for (let c = 0; c < 3; c++) {
        const left = rgb[l + c];
        row[3 * x + c] = f32(left + f32(f32(rgb[r + c] - left) * dx));
      }
    }
    rowCache.set(y, row);
    return row;
  };
  const out = new Uint8Array(outH * outW * 3);
  for (let y = 0; y < outH; y++) {
    const top = rowLerp(ys.lower[y]), bottom = rowLerp(ys.upper[y]), dy = ys.lerp[y];
    const o = y * outW * 3;
    for (let i = 0; i < outW * 3; i++) {
      const t = top[i];
      out[o + i] = f32(t + f32(f32(bottom[i] - t) * dy));  // Uint8Array stores truncate, like astype(uint8)
    }
  }
  return out;
}

// ------------------------------------------------------------------ pixels
// RGBA (e.g. ImageData.data, not premultiplied) -> RGB, transparency composited on black the way
// Pillow's alpha_composite does it (edge.preprocess.load_rgb).
export function rgbaToRgb(rgba) {
  const n = rgba.length / 4, out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const a = rgba[4 * i + 3];
    for (let c = 0; c < 3; c++) {
      const v = rgba[4 * i + c];
      if (a === 255) out[3 * i + c] = v;
      else {  // Pillow: coef = a * 128 (7 bits); SHIFTFORDIV255(v * coef + (0x80 << 7)) >> 7
        const t = v * a * 128 + (0x80 << 7);
        out[3 * i + c] = (((t >>> 8) + t) >>> 8) >>> 7;
      }
    }
  }
  return out;
}

// The model's input from RGB uint8, as edge.classifier.plan_input chooses it: an integer input
// takes the raw pixels (ours: uint8, scale 1, zero point 0), a float input (x - mean) / std with
// the metadata's mean and std (ours: 0 and 1, so raw 0..255 values), float32 like numpy.
export function toInput(rgb, dtype, mean = null, std = null) {
  if (dtype === "uint8") return rgb;
  if (dtype !== "float32") {
    throw new Error(`input type ${dtype} is not supported in the browser (LiteRT.js takes float32, int32, uint8)`);
  }
  const m = mean || [0], s = std || [1];
  const at = (v, i) => f32(v[v.length === 1 ? 0 : i % 3]);
  const out = new Float32Array(rgb.length);
  for (let i = 0; i < rgb.length; i++) out[i] = f32(f32(rgb[i] - at(m, i)) / at(s, i));
  return out;
}

// ------------------------------------------------------------------ JPEG draft decoding
// edge.preprocess.load_rgb lets Pillow's JPEG decoder scale by 1/2, 1/4 or 1/8 while decoding
// (libjpeg's scaled IDCT) when both sides stay at least twice the model input's; a browser's
// decoder cannot. The page averages s x s blocks of the full decode instead, in the photo's stored
// orientation, as the scaled IDCT does up to rounding (measured in docs/web.md).
// Pillow's JpegImageFile.draft(mode, (2 * outW, 2 * outH)): the scale it picks for a stored size.
export function draftScale(width, height, outH, outW) {
  const scale = Math.min(Math.floor(width / (2 * outW)), Math.floor(height / (2 * outH)));
  for (const s of [8, 4, 2]) if (scale >= s) return s;
  return 1;
}

// RGB uint8 (h * w * 3) -> ceil(w / s) x ceil(h / s): the rounded mean of each s x s block
// (blocks at the right and bottom edges average the pixels they have).
export function boxDownscale(rgb, width, height, s) {
  const ow = Math.ceil(width / s), oh = Math.ceil(height / s);
  const out = new Uint8Array(ow * oh * 3), sums = new Uint32Array(ow * 3);
  for (let oy = 0; oy < oh; oy++) {
    sums.fill(0);
    const y1 = Math.min(height, (oy + 1) * s), rows = y1 - oy * s;
    for (let y = oy * s; y < y1; y++) {
      const base = y * width * 3;
      for (let x = 0; x < width; x++) {
        const o = 3 * Math.floor(x / s), i = base + 3 * x;
        sums[o] += rgb[i]; sums[o + 1] += rgb[i + 1]; sums[o + 2] += rgb[i + 2];
      }
    }
    for (let ox = 0; ox < ow; ox++) {
      const n = rows * (Math.min(width, (ox + 1) * s) - ox * s), d = 3 * (oy * ow + ox);
      for (let c = 0; c < 3; c++) out[d + c] = Math.floor(sums[3 * ox + c] / n + 0.5);
    }
  }
  return out;
}

// ------------------------------------------------------------------ decoding (browser only)
// Whether createImageBitmap applies EXIF orientation itself (Chromium does, whatever
// imageOrientation says): learned once from a 2 x 1 JPEG tagged "rotate 90" (orientation 6).
const PROBE_JPEG =
  "/9j/4AAQSkZJRgABAQAAAQABAAD/4QAiRXhpZgAATU0AKgAAAAgAAQESAAMAAAABAAYAAAAAAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERXRTc4UG1RV19iZ2hnPk1xeXBkeFxlZ2P/2wBDARESEhgVGC8aGi9jQjhCY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2P/wAARCAABAAIDASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwD0CiiigD//2Q==";
let browserOrients = null;

async function browserAppliesOrientation() {
  if (browserOrients === null) {
    const bytes = Uint8Array.from(atob(PROBE_JPEG), (c) => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes], {type: "image/jpeg"}), BITMAP_OPTIONS);
    browserOrients = bitmap.width === 1 && bitmap.height === 2;
    bitmap.close();
  }
  return browserOrients;
}

// no colour management (Pillow applies none: the bytes' values, ICC profile or not), no premultiplying
const BITMAP_OPTIONS = {imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none"};

// A Blob (file, fetched photo) -> {rgb, width, height, orientation, draft}: upright RGB uint8, at
// full size, or for a JPEG scaled by 1 / draft as edge.preprocess.load_rgb decodes it when given the
// model's input size [outH, outW].
export async function decodeRgb(blob, size = null) {
  const bytes = new Uint8Array(await blob.slice(0, 1 << 17).arrayBuffer());  // EXIF comes before the image data
  const orientation = exifOrientation(bytes);
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, BITMAP_OPTIONS);
  } catch (e) {
    throw new Error(`not an image the browser can decode (${e.message || e.name})`);
  }
  let {width, height} = bitmap;
  let rgb = rgbaToRgb(bitmapRgba(bitmap));
  bitmap.close();
  const upright = await browserAppliesOrientation();
  const swapped = upright && orientation >= 5;
  const draft = size && bytes[0] === 0xff && bytes[1] === 0xd8
    ? draftScale(swapped ? height : width, swapped ? width : height, size[0], size[1]) : 1;
  if (draft > 1) {  // back to the stored orientation, average, upright again
    if (upright) ({rgb, width, height} = orient(rgb, width, height, INVERSE[orientation] || orientation));
    rgb = boxDownscale(rgb, width, height, draft);
    width = Math.ceil(width / draft);
    height = Math.ceil(height / draft);
    return {...orient(rgb, width, height, orientation), orientation, draft};
  }
  if (upright) return {rgb, width, height, orientation, draft};
  return {...orient(rgb, width, height, orientation), orientation, draft};
}

const INVERSE = {6: 8, 8: 6};  // the other orientations undo themselves

export function bitmapRgba(source, width = source.width, height = source.height) {
  const canvas = typeof OffscreenCanvas === "function"
    ? new OffscreenCanvas(width, height) : Object.assign(document.createElement("canvas"), {width, height});
  const ctx = canvas.getContext("2d", {willReadFrequently: true, colorSpace: "srgb"});
  ctx.drawImage(source, 0, 0, width, height);
  return ctx.getImageData(0, 0, width, height, {colorSpace: "srgb"}).data;
}
