// The device sampling loop over a manifest schedule table (edgekit/schedule.py): multiply-adds only,
//   model_input = input_scale[i] * x
//   x = sample_coeff[i] * x + sum_j eps_coeffs[i][j] * eps_j + sum_j noise_coeffs[i][j] * z_j
// so the browser never re-implements the diffusers scheduler. `model(input, t, i)` returns eps (guidance
// already applied) and may be async; z_j is step j's noise from the shared counter-based generator
// (edgekit/noise.py: Philox4x32-10 keyed by (seed, stream), Box-Muller). Checked by
// edgekit/twin_vectors/scheduler.json and noise.json.

const M0 = 0xD2511F53, M1 = 0xCD9E8D57, W0 = 0x9E3779B9, W1 = 0xBB67AE85;

// [hi, lo] 32-bit halves of the 64-bit product of two unsigned 32-bit numbers.
function mulhilo(a, b) {
  const aH = a >>> 16, aL = a & 0xffff, bH = b >>> 16, bL = b & 0xffff;
  const ll = aL * bL, lh = aL * bH, hl = aH * bL, hh = aH * bH;
  const mid = (ll >>> 16) + (lh & 0xffff) + (hl & 0xffff);
  const hi = (hh + Math.floor(lh / 65536) + Math.floor(hl / 65536) + Math.floor(mid / 65536)) >>> 0;
  return [hi, Math.imul(a, b) >>> 0];
}

// Philox4x32-10 of the counter [c0, c1, c2, c3] under the key [k0, k1]: four unsigned 32-bit words.
export function philox4x32(counter, key) {
  let [c0, c1, c2, c3] = counter.map((v) => v >>> 0);
  let k0 = key[0] >>> 0, k1 = key[1] >>> 0;
  for (let r = 0; r < 10; r++) {
    const [hi0, lo0] = mulhilo(M0, c0);
    const [hi1, lo1] = mulhilo(M1, c2);
    [c0, c1, c2, c3] = [(hi1 ^ c1 ^ k0) >>> 0, lo1, (hi0 ^ c3 ^ k1) >>> 0, lo0];
    if (r < 9) { k0 = (k0 + W0) >>> 0; k1 = (k1 + W1) >>> 0; }
  }
  return [c0, c1, c2, c3];
}

// The first `count` 32-bit words of stream (seed, stream): counters (block, 0, 0, 0).
export function noiseWords(seed, stream, count) {
  const out = new Array(count);
  for (let b = 0; 4 * b < count; b++) {
    const w = philox4x32([b, 0, 0, 0], [seed, stream]);
    for (let k = 0; k < 4 && 4 * b + k < count; k++) out[4 * b + k] = w[k];
  }
  return out;
}

// `count` standard normals of stream (seed, stream): stream 0 is an image's initial noise, stream j + 1
// the noise a stochastic scheduler adds at step j.
export function normals(seed, stream, count, ArrayType = Float64Array) {
  const pairs = Math.ceil(count / 2);
  const w = noiseWords(seed, stream, 2 * pairs);
  const out = new ArrayType(count);
  for (let p = 0; p < pairs; p++) {
    const u1 = (w[2 * p] + 0.5) / 4294967296, u2 = (w[2 * p + 1] + 0.5) / 4294967296;
    const r = Math.sqrt(-2 * Math.log(u1));
    out[2 * p] = r * Math.cos(2 * Math.PI * u2);
    if (2 * p + 1 < count) out[2 * p + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

// `noise(j)`: step j's noise (needed when the table has non-zero noise_coeffs), e.g.
// (j) => normals(seed, j + 1, x0.length).
export async function runTable(table, x0, model, { onStep = null, ArrayType = Float32Array, noise = null } = {}) {
  const n = x0.length;
  let x = ArrayType.from(x0, (v) => v * table.init_noise_sigma);
  const history = [];
  const drawn = new Map();
  for (let i = 0; i < table.timesteps.length; i++) {
    const t = table.timesteps[i];
    const scale = table.input_scale[i];
    const input = ArrayType.from(x, (v) => v * scale);
    history.push(await model(input, t, i));
    const next = new ArrayType(n);
    const a = table.sample_coeff[i];
    for (let k = 0; k < n; k++) next[k] = a * x[k];
    table.eps_coeffs[i].forEach((c, j) => {
      if (c === 0) return;
      const e = history[j];
      for (let k = 0; k < n; k++) next[k] += c * e[k];
    });
    (table.noise_coeffs?.[i] ?? []).forEach((c, j) => {
      if (c === 0) return;
      if (!noise) throw new Error(`schedule table (${table.scheduler}): step ${i} adds noise; pass noise(step)`);
      if (!drawn.has(j)) drawn.set(j, noise(j));
      const z = drawn.get(j);
      for (let k = 0; k < n; k++) next[k] += c * z[k];
    });
    x = next;
    if (onStep) await onStep(i + 1, table.timesteps.length);
  }
  return x;
}

// How the manifest's sampling applies guidance, as diffusers does: "classifier-free" (two UNet passes,
// guide() below) only for guidance_scale > 1 on a UNet without a guidance embedding; "conditional" (the
// prompt's prediction alone) for guidance_scale <= 1; "embedding" (conditional, the guidance fed as the
// UNet's timestep_cond from sampling.guidance_embedding.values).
export function guidanceMode(sampling) {
  if (sampling.guidance_mode) return sampling.guidance_mode;
  if (sampling.guidance_embedding) return "embedding";
  return sampling.guidance_scale > 1 ? "classifier-free" : "conditional";
}

// Classifier-free guidance on a batch of two eps halves [uncond, cond] or two separate outputs.
export function guide(uncond, cond, scale, ArrayType = Float32Array) {
  const out = new ArrayType(cond.length);
  for (let k = 0; k < cond.length; k++) out[k] = uncond[k] + scale * (cond[k] - uncond[k]);
  return out;
}
