// One sandbox: its state and actions, a live terminal, its files and CPU/memory charts.
import { useEffect, useState } from "preact/hooks";
import { call, describe, fmtBytes, fmtTime, type Sandbox } from "../api";
import { LineChart } from "../components/chart";
import { FileBrowser } from "../components/files";
import { TerminalView } from "../components/terminal";
import { useEvents } from "../events";
import { navigate } from "../router";
import { SandboxActions } from "./sandboxes";

interface MetricPoint {
  timestamp_unix: number;
  cpu_pct: number;
  mem_bytes: number;
}

function Metrics(props: { id: string; running: boolean; memoryMb: number }) {
  const [points, setPoints] = useState<MetricPoint[]>([]);
  const [error, setError] = useState("");
  useEffect(() => {
    const load = () =>
      call<{ points: MetricPoint[] }>("GET", `/v1/capsules/${encodeURIComponent(props.id)}/metrics?range=5m`)
        .then((m) => {
          setPoints(m.points ?? []);
          setError("");
        })
        .catch((e) => setError(describe(e)));
    load();
    if (!props.running) return;
    const t = setInterval(load, 5000);
    return () => clearInterval(t);
  }, [props.id, props.running]);
  return (
    <div class="charts">
      <LineChart title="CPU" max={100} format={(v) => `${v.toFixed(0)} %`}
        points={points.map((p) => ({ t: p.timestamp_unix, v: p.cpu_pct }))} />
      <LineChart title="Memory" max={props.memoryMb * 1024 * 1024} format={fmtBytes}
        points={points.map((p) => ({ t: p.timestamp_unix, v: p.mem_bytes }))} />
      {error && <p class="error small">{error}</p>}
    </div>
  );
}

export function SandboxPage(props: { id: string }) {
  const [sb, setSb] = useState<Sandbox | null>(null);
  const [error, setError] = useState("");
  const [gone, setGone] = useState(false);
  const load = () =>
    call<Sandbox>("GET", `/v1/sandboxes/${encodeURIComponent(props.id)}`)
      .then(setSb)
      .catch((e) => {
        if (e?.status === 404) setGone(true);
        else setError(describe(e));
      });
  useEffect(() => {
    load();
  }, [props.id]);
  useEvents((_name, data) => {
    const d = data as { resource?: { id?: string } } | null;
    if (!d?.resource?.id || d.resource.id === props.id) load();
  });

  if (gone) {
    return (
      <section>
        <p class="error">Sandbox {props.id} does not exist (or was destroyed).</p>
        <a href="/" onClick={(e) => { e.preventDefault(); navigate("/"); }}>Back to the sandboxes</a>
      </section>
    );
  }
  if (!sb) return error ? <p class="error">{error}</p> : <p class="muted">Loading…</p>;
  const running = sb.status === "running";
  return (
    <section>
      <div class="row spread">
        <h1>
          <code>{sb.id}</code> <span class={`status ${sb.status}`} data-testid="status">{sb.status}</span>
        </h1>
        <SandboxActions sb={sb} onError={setError}
          done={(destroyed) => (destroyed ? navigate("/") : load())} />
      </div>
      <p class="muted">
        {sb.template} · {sb.vcpus} vCPU · {sb.memory_mb} MB ·{" "}
        {sb.timeout_sec ? `pauses after ${sb.timeout_sec} s idle` : "no idle timeout"} · created{" "}
        {fmtTime(sb.created_at)}
      </p>
      {error && <p class="error">{error}</p>}
      <div class="grid">
        <div class="panel term-panel">
          <h2>Terminal</h2>
          <TerminalView id={sb.id} running={running} />
        </div>
        <div class="panel">
          <h2>Usage</h2>
          <Metrics id={sb.id} running={running} memoryMb={sb.memory_mb} />
        </div>
        <div class="panel files-panel">
          <h2>Files</h2>
          <FileBrowser id={sb.id} running={running} />
        </div>
      </div>
    </section>
  );
}
