// Step caching (edgekit/step_cache.py, DeepCache) in the browser: the manifest's sampling.step_cache says, per
// offered interval and step count, which graph each UNet call of that step count's schedule table runs (a table
// may make more calls than steps: SD-1.5's PNDM makes steps + 1) ("full": the UNet graph that also outputs the
// feature entering its last up block, joined after the noise channels; "shallow": the small graph fed that
// feature). This module only follows that data, like the Kotlin and Swift cores; checked by
// edgekit/twin_vectors/step_cache.json.

export const FULL = "full";
export const SHALLOW = "shallow";

export class StepCacheError extends Error {}

// The plan for `interval` at `steps` steps from the manifest's "sampling" (null for 1: the plain loop): one role
// per UNet call of the `steps`-step schedule table.
export function cachePlan(sampling, interval, steps) {
  if (!Number.isInteger(interval) || interval < 1) {
    throw new StepCacheError(`cache ${interval}: expected a whole number >= 1 (1 = no step caching)`);
  }
  if (interval === 1) return null;
  const plans = sampling?.step_cache?.plans ?? {};
  const bySteps = plans[String(interval)];
  if (!bySteps) {
    throw new StepCacheError(`cache ${interval}: the bundle offers no step-cache plan at this interval (offers: `
      + `${["1", ...Object.keys(plans)].join(", ")})`);
  }
  const plan = bySteps[String(steps)];
  if (!Array.isArray(plan)) throw new StepCacheError(`cache ${interval}: the bundle has no ${steps}-step plan at this interval`);
  const table = sampling?.schedules?.[String(steps)];
  if (!Array.isArray(table?.timesteps)) throw new StepCacheError(`cache ${interval}: the bundle has no schedule for ${steps} steps`);
  const calls = table.timesteps.length;
  if (plan.length !== calls || plan[0] !== FULL || plan.some((r) => r !== FULL && r !== SHALLOW)) {
    throw new StepCacheError(`sampling.step_cache.plans.${interval}.${steps}: expected ${calls} of full/shallow (one per UNet `
      + `call of the ${steps}-step schedule table), the first full`);
  }
  return plan;
}

// The graphs a plan's roles name (manifest component keys) and where the full graph's output splits.
export function cacheGraphs(sampling) {
  const section = sampling?.step_cache;
  if (!section) throw new StepCacheError("sampling.step_cache missing");
  return { full: section.graphs[FULL], shallow: section.graphs[SHALLOW],
           noiseChannels: section.full_output.noise_channels, featureInput: section.full_output.feature_input };
}

// The UNet call `step` of the table runs the graph plan[step] names (null: `plain` every call); a call past the
// plan is an error. Inputs and outputs hold `rows` rows in NCHW order, `pixels` pixels per channel; `full(x, t)`
// returns the noise channels then the feature channels, split at `noiseChannels`, and the feature rows are kept
// for the shallow calls after it; `shallow(x, t, feature)`. The graph functions may be async. Returns
// `(x, t, step) => eps rows`.
export function cachedUNet(plan, noiseChannels, pixels, rows, { plain, full, shallow, ArrayType = Float32Array }) {
  let feature = null;
  return async (x, t, step) => {
    if (!plan) return plain(x, t);
    if (step >= plan.length) throw new StepCacheError(`step ${step}: past the plan's ${plan.length} UNet calls`);
    const role = plan[step];
    if (role === SHALLOW) {
      if (!feature) throw new StepCacheError(`step ${step}: a shallow step before any full step`);
      return shallow(x, t, feature);
    }
    const out = await full(x, t);
    const per = out.length / rows, eps = noiseChannels * pixels;
    const noise = new ArrayType(rows * eps), kept = new ArrayType(rows * (per - eps));
    for (let r = 0; r < rows; r++) {
      noise.set(out.subarray(r * per, r * per + eps), r * eps);
      kept.set(out.subarray(r * per + eps, (r + 1) * per), r * (per - eps));
    }
    feature = kept;
    return noise;
  };
}
