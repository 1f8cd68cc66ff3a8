export function add(a, b) {
  return a + b;
}

export function mean(values) {
  if (values.length === 0) throw new Error("mean of no values");
  return values.reduce((s, v) => s + v, 0) / values.length;
}
