// The device sampling loop over a manifest schedule table (edgekit/schedule.py): multiply-adds only,
//   model_input = input_scale[i] * x;  x = sample_coeff[i] * x + sum_j eps_coeffs[i][j] * eps_j
// so the browser never re-implements the diffusers scheduler. `model(input, t)` returns eps (guidance
// already applied) and may be async. Checked by edgekit/twin_vectors/scheduler.json.

export async function runTable(table, x0, model, { onStep = null, ArrayType = Float32Array } = {}) {
  const n = x0.length;
  let x = ArrayType.from(x0, (v) => v * table.init_noise_sigma);
  const history = [];
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
    x = next;
    if (onStep) await onStep(i + 1, table.timesteps.length);
  }
  return x;
}

// Classifier-free guidance on a batch of two eps halves [uncond, cond] or two separate outputs.
export function guide(uncond, cond, scale, ArrayType = Float32Array) {
  const out = new ArrayType(cond.length);
  for (let k = 0; k < cond.length; k++) out[k] = uncond[k] + scale * (cond[k] - uncond[k]);
  return out;
}
