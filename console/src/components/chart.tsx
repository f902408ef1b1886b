// A small line chart drawn as SVG: one series over time, scaled to its maximum.
export function LineChart(props: {
  title: string;
  points: { t: number; v: number }[];
  max?: number;
  format: (v: number) => string;
}) {
  const W = 300;
  const H = 80;
  const pts = props.points;
  const last = pts.length ? pts[pts.length - 1].v : undefined;
  const max = Math.max(props.max ?? 0, ...pts.map((p) => p.v), 1e-9);
  const t0 = pts.length ? pts[0].t : 0;
  const span = pts.length > 1 ? pts[pts.length - 1].t - t0 : 1;
  const line = pts
    .map((p) => `${(((p.t - t0) / span) * W).toFixed(1)},${(H - (p.v / max) * (H - 4) - 2).toFixed(1)}`)
    .join(" ");
  return (
    <figure class="chart">
      <figcaption>
        {props.title} <strong>{last === undefined ? "—" : props.format(last)}</strong>
      </figcaption>
      <svg viewBox={`0 0 ${W} ${H}`} preserveAspectRatio="none" role="img" aria-label={props.title}>
        <line x1="0" y1={H - 1} x2={W} y2={H - 1} class="axis" />
        {pts.length > 1 && <polyline points={line} class="series" />}
      </svg>
      <span class="muted small">max {props.format(max)}</span>
    </figure>
  );
}
